"""Off a terminal (CI, `dcim demo | cat`) the demo prints plain lines: a start line, the addresses, periodic
status lines, the final summary; no escape codes. Run in-process on the example hall, every port held by
the test until its server takes it over."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.app.config import parse_config
from dcim.app.demo import View, demo
from dcim.simulators.plant import Plant
from tests.demo.busy import EXAMPLE
from tests.helpers import free_port, hand_over, hold_udp_port, wait_until


def held_example(tmp_path: Path) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    raw["state_dir"] = str(tmp_path / "state")
    raw["http"] = {"port": free_port()}
    for device in raw["devices"]:
        if device["protocol"] == "snmp":
            device["port"] = hold_udp_port()
        elif device["protocol"] == "opcua":
            device["endpoint"] = f"opc.tcp://127.0.0.1:{free_port()}"
        else:
            device["port"] = free_port()
    return raw


class NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


# Sixteen simulated devices, the broker and the daemon in one process: minutes on a loaded 2-core machine.
@pytest.mark.timeout(900)
async def test_not_a_terminal_prints_plain_status_lines(tmp_path: Path) -> None:
    raw = held_example(tmp_path)
    config = parse_config(raw, "test")
    plant = hand_over(Plant(config), config.devices)
    view = View(config)
    out = NotATerminal()
    stop = asyncio.Event()
    running = asyncio.create_task(demo(config, duration=None, faults=False, out=out, plant=plant, stop=stop,
                                       view=view))
    try:
        # Every device has a status (online, or offline on a slow machine: either way the screen has
        # something to say about each) and the HTTP API listens.
        await wait_until(lambda: running.done() or (set(view.status) == {d.id for d in config.devices}
                                                    and view.api() is not None),
                         timeout=400, message="every device's status")
        await wait_until(lambda: running.done() or "HTTP API and console" in out.getvalue(), timeout=120)
    finally:
        stop.set()
        await asyncio.wait_for(running, 300)
    text = out.getvalue()
    lines = text.splitlines()
    assert "\x1b" not in text
    assert lines[0].startswith("dcim demo: starting the simulators of 16 devices")
    assert f"HTTP API and console: http://127.0.0.1:{raw['http']['port']}/" in text
    status = [line for line in lines if line.startswith("[") and "| alarms " in line]
    assert status and all("devices " in line and " MQTT messages" in line for line in status)
    assert lines[-1] == "demo stopped cleanly"
    # The final summary names every device.
    summary = text[text.rindex("dcim demo: site hall-1"):]
    assert all(d.id in summary for d in config.devices)
