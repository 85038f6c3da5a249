"""A small hall for write tests: a CDU (Modbus), an APC PDU (SNMP) and a chiller (OPC UA), served by the
project's simulators over their real protocols, with a plant that counts every write reaching it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from dcim.app.config import Config, load_config
from dcim.app.daemon import Daemon
from dcim.core.audit import AuditLog
from dcim.core.samples import Value
from dcim.core.topology import Topology
from dcim.drivers.base import Driver, DriverContext
from dcim.drivers.profiles import Profile, load_profile
from dcim.rules.store import AlarmStore
from dcim.rules.writes import WriteGuard, WriteRequest, WriteResult
from dcim.simulators.plant import Plant
from tests.e2e.harness import REPO
from tests.helpers import free_port, hold_udp_port, wait_until

TOKEN = "write-test-token"


class CountingPlant(Plant):
    """The simulators' plant, recording every write a protocol server hands it (what reached the device)."""

    def __init__(self, config: Config) -> None:
        self.received: list[tuple[str, str, Value]] = []
        super().__init__(config, frozen=True)

    def write(self, device: str, point: str, value: Value) -> None:
        self.received.append((device, point, value))
        super().write(device, point, value)

    def switch_outlet(self, device: str, outlet: int, on: bool) -> None:
        self.received.append((device, f"outlet:{outlet}", on))
        super().switch_outlet(device, outlet, on)


def hall(tmp_path: Path, *, control: dict[str, Any] | None = None, chiller: bool = False,
         http: bool = False, **extra: Any) -> Path:
    """One liquid rack on a CDU, fed by one PDU (feed A), optionally a chiller; control armed by default."""
    devices: list[dict[str, Any]] = [
        {"id": "cdu-1", "kind": "cdu", "protocol": "modbus", "host": "127.0.0.1", "port": free_port(),
         "unit_id": 1, "profile": "generic-cdu", "interval": "500ms", "timeout": "500ms", "retries": 1,
         "simulate": True},
        {"id": "pdu-1", "kind": "pdu", "protocol": "snmp", "host": "127.0.0.1", "port": hold_udp_port(),
         "profile": "apc-rpdu2", "community": "public", "write_community": "private", "interval": "500ms",
         "timeout": "500ms", "retries": 1, "deadline": "2s", "simulate": True},
    ]
    if chiller:
        devices.append({
            "id": "chiller-1", "kind": "chiller", "protocol": "opcua", "profile": "generic-chiller",
            "endpoint": f"opc.tcp://127.0.0.1:{free_port()}", "mode": "poll", "timeout": "2s",
            "interval": "500ms", "simulate": True})
    token = tmp_path / "http-token"
    token.write_text(TOKEN)
    config: dict[str, Any] = {
        "site": {"id": "hall-1"},
        "rooms": [{"id": "dh1", "rows": [{"id": "A", "racks": [
            {"id": "A01", "cooling": "liquid", "power_budget_kw": 150, "cdu": "cdu-1",
             "feeds": {"a": {"pdu": "pdu-1", "breaker_a": 125}}},
        ]}]}],
        "devices": devices,
        "state_dir": str(tmp_path / "state"),
        "logging": {"level": "info", "format": "json"},
        "rules": {"control": {"armed": True, "min_interval": "1h", "verify_timeout": "10s", **(control or {})}},
        "http": {"enabled": True, "port": free_port(), "token": f"file:{token}"} if http else {"enabled": False},
        **extra,
    }
    path = tmp_path / "dcim.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Direct:
    """The guard as `dcim write --direct` builds it, on real drivers, in the test's loop."""

    def __init__(self, config: Config, *, profiles: dict[str, Profile[Any]] | None = None) -> None:
        from dcim.app.poller import make_driver

        self.config = config
        self.context = DriverContext()
        self.drivers: dict[str, Driver] = {}
        for device in config.devices:
            profile = (profiles or {}).get(device.id) or load_profile(device.profile)
            self.drivers[device.id] = make_driver(device, profile, self.context)
        Path(config.state_dir).mkdir(parents=True, exist_ok=True)
        self.store = AlarmStore(Path(config.state_dir) / config.rules.store)
        self.audit = AuditLog(Path(config.state_dir) / "audit.log")
        self.guard = WriteGuard(config.rules.control, Topology(config), drivers=self.drivers.get,
                                maintenance=self.store, audit=self.audit, connect=True)

    async def write(self, device: str, point: str, value: Value, *, origin: str = "cli:tester",
                    **kw: Any) -> WriteResult:
        return await self.guard.write(WriteRequest(device, point, value, origin, **kw))

    async def close(self) -> None:
        for driver in self.drivers.values():
            await driver.close()
        self.store.close()


@asynccontextmanager
async def direct(config: Config, **kw: Any) -> AsyncIterator[Direct]:
    rig = Direct(config, **kw)
    try:
        yield rig
    finally:
        await rig.close()


async def dcim(*argv: str, stdin: bytes | None = None, timeout: float = 90) -> tuple[int, str, str]:  # noqa: ASYNC109
    """`dcim ...` as a process (stdin a pipe, never a terminal)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dcim.app.cli", *argv, cwd=REPO, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin or b""), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def load(path: Path) -> Config:
    return load_config(path)


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Daemon]:
    """`Daemon.run` in this process until the block ends; fails at once if it could not start."""
    daemon = Daemon(config)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop), name="daemon")
    try:
        await wait_until(lambda: daemon.ready.is_set() or task.done(), timeout=60, message="daemon ready")
        if task.done():
            task.result()
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
