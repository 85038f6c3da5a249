"""End-to-end harness: a configuration on held ports, simulators in the test's loop, `dcim run` as a process.

Every port in a configuration written here is held by this test from the moment it is chosen
(``tests.helpers.free_port``: TCP, bound and never listening; ``hold_udp_port``: UDP, handed to the SNMP
simulator as its socket), so nothing else can take it before the simulator or the daemon binds it. The
simulators say themselves when they listen (``ready``), and the daemon's readiness is read from its own
log or /healthz: no port is probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from dcim.app.config import Config, load_config
from dcim.app.daemon import Daemon
from dcim.app.simulate import run_simulators, wait_listening
from dcim.core.samples import Batch, DeviceStatus
from dcim.drivers.modbus import codec
from dcim.drivers.profiles import load_profile
from dcim.simulators.plant import Plant
from tests.helpers import free_port, hand_over, wait_until, wait_until_sync

REPO = Path(__file__).resolve().parents[2]


def cdu_rows(cdus: int, interval: str, timeout: str = "300ms") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(devices, rows): `cdus` simulated CDUs, each on its own free port, each serving a row of two
    liquid-cooled racks."""
    devices = []
    rows = []
    for n in range(1, cdus + 1):
        devices.append({
            "id": f"cdu-{n}", "kind": "cdu", "protocol": "modbus", "host": "127.0.0.1", "port": free_port(),
            "unit_id": 1, "profile": "generic-cdu", "interval": interval, "timeout": timeout, "retries": 0,
            "room": "dh1", "row": f"R{n}", "simulate": True,
        })
        rows.append({"id": f"R{n}", "racks": [
            {"id": f"R{n}-{k}", "cooling": "liquid", "power_budget_kw": 150, "cdu": f"cdu-{n}"} for k in (1, 2)
        ]})
    return devices, rows


def cdu_hall(tmp_path: Path, *, mqtt: Any | None = None, influxdb: dict[str, Any] | None = None,
             cdus: int = 2, interval: str = "500ms", **extra: Any) -> Path:
    """Liquid-cooled racks on `cdus` simulated CDUs, each on its own free port."""
    devices, rows = cdu_rows(cdus, interval)
    config: dict[str, Any] = {
        "site": {"id": "hall-1"},
        "rooms": [{"id": "dh1", "rows": rows}],
        "devices": devices,
        "state_dir": str(tmp_path / "state"),
        "logging": {"level": "info", "format": "json"},
        "http": {"enabled": False},
    }
    if mqtt is not None:
        config["mqtt"] = {"host": "127.0.0.1", "port": mqtt.port, "prefix": "dcim"}
    if influxdb is not None:
        config["influxdb"] = {"flush_interval": "100ms", **influxdb}
    config.update(extra)
    path = tmp_path / "dcim.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def simulators(config: Config, plant: Plant) -> AsyncIterator[Plant]:
    ready = asyncio.Event()
    hand_over(plant, config.devices)  # UDP ports this test holds are served on the sockets that hold them
    task = asyncio.create_task(run_simulators(config, plant, ready=ready), name="simulators")
    try:
        await wait_listening(ready, task)
        yield plant
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Recorder:
    """A pipeline sink that keeps every batch by device, and every status change."""

    def __init__(self) -> None:
        self.batches: dict[str, list[Batch]] = {}
        self.status: list[DeviceStatus] = []

    def on_batch(self, batch: Batch) -> None:
        self.batches.setdefault(batch.device, []).append(batch)

    def on_status(self, status: DeviceStatus) -> None:
        self.status.append(status)


@contextlib.asynccontextmanager
async def daemon_in_process(config: Config) -> AsyncIterator[tuple[Daemon, Plant, Recorder]]:
    """The daemon run in this process, on the configuration's simulators (a frozen plant), a `Recorder` as
    its pipeline's last sink; ready (its first poll round done) when this yields, stopped afterwards."""
    plant = Plant(config, frozen=True)
    recorder = Recorder()
    daemon = Daemon(config)
    daemon.pipeline.add_sink(recorder)
    stop = asyncio.Event()
    async with simulators(config, plant):
        run = asyncio.create_task(daemon.run(stop))
        try:
            await wait_until(lambda: daemon.ready.is_set(), timeout=10)
            yield daemon, plant, recorder
        finally:
            stop.set()
            await asyncio.wait_for(run, 15)


def expected_cdu_values(plant: Plant, device: str, profile_name: str = "generic-cdu") -> dict[str, Any]:
    """What the daemon must store: the plant's values after the register round trip (scale, type)."""
    profile = load_profile(profile_name)
    values = plant.values(device)
    out: dict[str, Any] = {}
    for point in profile.points:
        value = values[point.name]
        if isinstance(value, bool | str) or point.bit is not None or point.table in ("coil", "discrete"):
            out[point.name] = value
        else:
            out[point.name] = codec.decode(point, codec.encode(point, value))
    return out


class PortConflict(RuntimeError):
    """A process of ours found an address it was configured with in use."""


class DaemonProcess:
    """`dcim run -c FILE` in a process of its own, stopped with a real signal."""

    def __init__(self, config_path: Path, *args: str, command: str = "run") -> None:
        self.config_path = config_path
        self.log_path = config_path.parent / f"dcim-{command}.log"
        self.argv = [sys.executable, "-m", "dcim.app.cli", command, "-c", str(config_path), *args]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"daemon did not stop within {timeout} s of {signal.Signals(sig).name}:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def events(self, event: str) -> list[dict[str, Any]]:
        """The process's own JSON log records of `event` (configure `logging.format: json`)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        found = []
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and record.get("event") == event:
                        found.append(record)
        return found

    async def ready(self, event: str = "simulators ready", timeout: float = 120.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Until the process logs `event` itself (`dcim simulate` logs "simulators ready" once every simulator
        said its sockets are bound): nothing is probed. Raises PortConflict if it exits first because an address
        was in use (the caller chooses other ports), AssertionError if it exits for another reason."""
        return await wait_until(lambda: self._logged(event), timeout=timeout, interval=0.05,
                                message=f"{event!r} from {self.argv}")

    def ready_sync(self, event: str = "simulators ready", timeout: float = 120.0) -> dict[str, Any]:
        """`ready` for synchronous code (a module-scoped fixture)."""
        return wait_until_sync(lambda: self._logged(event), timeout=timeout, interval=0.05,
                               message=f"{event!r} from {self.argv}")

    def _logged(self, event: str) -> dict[str, Any] | None:
        if records := self.events(event):
            return records[-1]
        if self.process is not None and self.process.poll() is not None:
            log = self.log()
            if "Address already in use" in log or "Errno 98" in log:
                raise PortConflict(f"{' '.join(self.argv)}: a port was taken:\n{log[-2000:]}")
            raise AssertionError(f"exited {self.process.returncode} before {event!r}:\n{log}")
        return None

    def __enter__(self) -> DaemonProcess:
        # A process already started (and waited for with ready()) is adopted, not started twice.
        if self.process is not None and self.process.poll() is None:
            return self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def load(path: Path) -> Config:
    return load_config(path)
