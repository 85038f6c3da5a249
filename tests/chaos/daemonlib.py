"""Helpers for the daemon-as-a-process chaos tests: its HTTP port from its own log, /healthz, /metrics."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.harness import DaemonProcess
from tests.helpers import wait_until
from tests.servers import http_request

_SAMPLE = re.compile(r'^(\w+)(?:\{([^}]*)\})? (\S+)$')


def with_http(path: Path, **http: Any) -> Path:
    """The harness's configuration with the HTTP API on port 0 (the daemon reports the port it got)."""
    config = yaml.safe_load(path.read_text())
    config["http"] = {"port": 0, **http}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def log_events(daemon: DaemonProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in daemon.log_path.read_text(errors="replace").splitlines() if daemon.log_path.exists() else []:
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def http_port(daemon: DaemonProcess) -> int | None:
    events = log_events(daemon, "http api listening")
    return int(events[-1]["port"]) if events else None


async def get(port: int, path: str) -> tuple[int, bytes]:
    return await asyncio.to_thread(http_request, "GET", f"http://127.0.0.1:{port}{path}", None, None, 10.0)


async def health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = await get(port, "/healthz")
    return status, json.loads(body)


async def healthy(port: int) -> dict[str, Any] | None:
    """The /healthz report once it says 200 (for wait_until), else None."""
    status, report = await health(port)
    return report if status == 200 else None


async def metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics as {(name, labels): value}."""
    _, body = await get(port, "/metrics")
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in body.decode().splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = frozenset(tuple(p.split("=", 1)) for p in re.findall(r'\w+="[^"]*"', match[2] or ""))
            out[(match[1], frozenset((k, v.strip('"')) for k, v in labels))] = float(match[3])
    return out


def polls(sample: dict[tuple[str, frozenset[tuple[str, str]]], float], device: str, result: str) -> float:
    return sample.get(("dcim_polls_total", frozenset({("device", device), ("result", result)})), 0.0)


async def ok_polls_at_least(port: int, device: str, count: float) -> bool:
    return polls(await metrics(port), device, "ok") >= count


async def offline(port: int, device: str) -> bool:
    _, report = await health(port)
    return report["devices"][device]["online"] is False


async def final_good_polls(port: int, plant: Any, device: str, daemon: DaemonProcess) -> int:
    """Freeze the count: the simulated device stops answering, and once the daemon has it offline, the good
    polls it made are final (what the database must hold)."""
    plant.inject(device, "no_response")
    await wait_until(lambda: offline(port, device), timeout=30, message=daemon.log())
    return int(polls(await metrics(port), device, "ok"))
