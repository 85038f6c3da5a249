"""The test hall: air- and liquid-cooled racks, APC and Raritan PDUs on A/B feeds, CDUs, a chiller.

`hall_config(ports)` returns the raw configuration mapping; ports are only used when the daemon and the
simulators really serve it (`start_simulators`: tests/grafana/test_daemon_fill.py and faults.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.harness import DaemonProcess, PortConflict
from tests.helpers import free_port


def hall_config(port: Callable[[], int] | None = None, *, interval: str = "1s", racks_per_row: int = 2
                ) -> dict[str, Any]:
    """Row A: liquid-cooled 150 kW racks (APC PDUs), each on its own CDU (A01 on cdu-1, ...); row B:
    air-cooled 50 kW racks (Raritan PDUs). Breakers sized for 2N: one feed carries the whole rack within
    80 % of its breaker."""
    def next_port() -> int:
        return port() if port is not None else 0

    devices: list[dict[str, Any]] = []
    racks_a: list[dict[str, Any]] = []
    racks_b: list[dict[str, Any]] = []
    for n in range(1, racks_per_row + 1):
        devices.append({"id": f"cdu-{n}", "kind": "cdu", "protocol": "modbus", "host": "127.0.0.1",
                        "port": next_port() or 15020 + n, "unit_id": 1, "profile": "generic-cdu",
                        "interval": interval, "timeout": "500ms", "room": "dh1", "row": "A", "simulate": True})
    racks: list[tuple[str, str, int, str | None, str]] = []
    for n in range(1, racks_per_row + 1):
        racks.append((f"A{n:02d}", "liquid", 150, f"cdu-{n}", "apc-rpdu2"))
    for n in range(1, racks_per_row + 1):
        racks.append((f"B{n:02d}", "air", 50, None, "raritan-px"))
    for rack, cooling, budget, loop, profile in racks:
        feeds = {}
        for side in ("a", "b"):
            pdu = f"pdu-{rack.lower()}{side}"
            feeds[side] = {"pdu": pdu, "breaker_a": 300 if cooling == "liquid" else 125}
            devices.append({"id": pdu, "kind": "pdu", "protocol": "snmp", "host": "127.0.0.1",
                            "port": next_port() or 16100 + len(devices), "profile": profile,
                            "interval": interval, "timeout": "500ms", "simulate": True})
        entry: dict[str, Any] = {"id": rack, "cooling": cooling, "power_budget_kw": budget, "feeds": feeds}
        if loop:
            entry["cdu"] = loop
        (racks_a if rack.startswith("A") else racks_b).append(entry)
    chiller_port = next_port() or 14840
    devices.append({"id": "chiller-1", "kind": "chiller", "protocol": "opcua",
                    "endpoint": f"opc.tcp://127.0.0.1:{chiller_port}", "profile": "generic-chiller",
                    "interval": interval, "timeout": "2s", "room": "plant", "simulate": True})
    return {
        "site": {"id": "hall-1", "name": "test hall"},
        "rooms": [{"id": "dh1", "rows": [{"id": "A", "racks": racks_a}, {"id": "B", "racks": racks_b}]}],
        "devices": devices,
        "http": {"enabled": False},
    }


def start_simulators(path: Path, configure: Callable[[dict[str, Any]], None], *, interval: str
                     ) -> tuple[DaemonProcess, int, dict[str, Any]]:
    """`dcim simulate` serving the test hall on free ports, with its fault-injection endpoint: (the process,
    started and ready, the endpoint's port, the raw configuration written to `path` after `configure`).

    The ports are chosen free and given to the process, which binds them itself: one taken meanwhile (the
    SNMP agents' UDP ports cannot be held until then) makes it exit with "Address already in use", and the
    hall is made again on other ports, up to three times. Ready is the process' own "simulators ready"
    line (every socket bound), not a probe."""
    for _attempt in range(3):
        raw = hall_config(free_port, interval=interval)
        configure(raw)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        control = free_port()
        simulate = DaemonProcess(path, "--control-port", str(control), command="simulate").start()
        try:
            simulate.ready_sync()
            return simulate, control, raw
        except PortConflict:
            simulate.stop()
    raise AssertionError(f"dcim simulate found a port taken three times:\n{simulate.log()}")
