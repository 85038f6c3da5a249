"""A small hall for the console tests, and a headless Chromium driven by Playwright.

The hall: room dh1, row A with two liquid racks on one CDU (A01 fed by pdu-1, A02 without feeds), row B
with two air racks (B01 fed by pdu-2, B02 with no equipment at all): every kind of cell the hall draws.
The devices are the project's simulators over their real protocols (Modbus, SNMP).

The browser is Debian's chromium (/usr/bin/chromium, installed by scripts/install-test-deps.sh), never a
download: Playwright only drives it (executable_path), in a fresh profile directory per test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import free_port, hold_udp_port, require_binary

TOKEN = "console-test-token"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RACKS = ("A01", "A02", "B01", "B02")


def hall(tmp_path: Path, *, http: dict[str, Any] | None = None, devices: bool = True) -> Path:
    token = tmp_path / "http-token"
    token.write_text(TOKEN)
    equipment: list[dict[str, Any]] = [
        {"id": "cdu-1", "kind": "cdu", "protocol": "modbus", "host": "127.0.0.1", "port": free_port(),
         "unit_id": 1, "profile": "generic-cdu", "interval": "500ms", "timeout": "1s", "retries": 1,
         "simulate": True},
        {"id": "pdu-1", "kind": "pdu", "protocol": "snmp", "host": "127.0.0.1", "port": hold_udp_port(),
         "profile": "apc-rpdu2", "community": "public", "interval": "1s", "timeout": "1s", "retries": 1,
         "deadline": "3s", "simulate": True},
        {"id": "pdu-2", "kind": "pdu", "protocol": "snmp", "host": "127.0.0.1", "port": hold_udp_port(),
         "profile": "apc-rpdu2", "community": "public", "interval": "1s", "timeout": "1s", "retries": 1,
         "deadline": "3s", "simulate": True},
    ]
    config: dict[str, Any] = {
        "site": {"id": "hall-1", "name": "console test hall"},
        "rooms": [{"id": "dh1", "rows": [
            {"id": "A", "racks": [
                {"id": "A01", "cooling": "liquid", "power_budget_kw": 150, "cdu": "cdu-1",
                 "feeds": {"a": {"pdu": "pdu-1", "breaker_a": 125}}},
                {"id": "A02", "cooling": "liquid", "power_budget_kw": 150, "cdu": "cdu-1"},
            ]},
            {"id": "B", "racks": [
                {"id": "B01", "cooling": "air", "power_budget_kw": 40, "feeds": {"a": {"pdu": "pdu-2"}}},
                {"id": "B02", "cooling": "air", "power_budget_kw": 40},
            ]},
        ]}],
        "devices": equipment if devices else [],
        "state_dir": str(tmp_path / "state"),
        "logging": {"level": "warning", "format": "json"},
        "http": {"enabled": True, "host": "127.0.0.1", "port": 0, "token": f"file:{token}", **(http or {})},
    }
    if not devices:
        # Racks that reference no equipment (a liquid rack needs its CDU): the hall still draws them all.
        for room in config["rooms"]:
            for row in room["rows"]:
                row["racks"] = [{"id": r["id"], "cooling": "air", "power_budget_kw": r["power_budget_kw"]}
                                for r in row["racks"]]
    path = tmp_path / "dcim.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def screenshot_dir(tmp_path: Path) -> Path:
    """$DCIM_CONSOLE_SCREENSHOTS when set (e.g. docs/img to refresh the README's pictures), else the test's
    temporary directory."""
    wanted = os.environ.get("DCIM_CONSOLE_SCREENSHOTS")
    where = Path(wanted) if wanted else tmp_path / "screenshots"
    where.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {where}")
    return where


@asynccontextmanager
async def browser() -> AsyncIterator[Any]:
    """A fresh browser context (its own profile directory) in Debian's chromium."""
    chromium = require_binary("chromium", "chromium")  # skipped when missing; under CI a failure
    from playwright.async_api import async_playwright

    profile = tempfile.mkdtemp(prefix="dcim-console-chromium-")
    try:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 860})
            try:
                yield context
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
