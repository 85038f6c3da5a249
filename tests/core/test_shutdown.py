"""Shutdown never hangs: a library that swallows a cancellation, a task that fails at start."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from dcim.app.poller import DeviceCoordinator
from dcim.core.aio import reraise_lost_cancellation
from dcim.core.pipeline import Pipeline
from dcim.core.samples import Sample, Value, now_ns
from dcim.drivers.base import Driver
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.profiles import load_profile
from tests.e2e.harness import REPO, cdu_hall
from tests.helpers import wait_until


class SwallowingDriver(Driver):
    """A test double for what Python 3.11's asyncio.wait_for does inside pymodbus, asyncua and aiosmtplib
    (gh-86296): a cancellation that lands as the inner call completes is dropped. The real race cannot be
    triggered on demand, so this driver drops every cancellation on purpose."""

    reads = 0

    async def connect(self) -> None:
        pass

    async def read(self) -> list[Sample]:
        self.reads += 1
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            pass  # swallowed, as the library bug does
        return [Sample(self.device.id, "flow_lpm", 1.0, now_ns(), measurement="cdu")]

    async def write(self, point: str, value: Value) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_a_poller_stops_even_when_its_driver_swallows_the_cancellation() -> None:
    device = ModbusDevice(id="cdu-1", kind="cdu", protocol="modbus", profile="generic-cdu", interval=0.02)
    driver = SwallowingDriver(device, load_profile("generic-cdu"))
    coordinator = DeviceCoordinator(device, driver, Pipeline())
    task = asyncio.create_task(coordinator.run())
    await wait_until(lambda: driver.reads >= 3, timeout=60)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done, "the poller ran on after its cancellation was swallowed"
    assert task.cancelled()


async def test_reraise_lost_cancellation() -> None:
    async def swallowing_loop() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass
            reraise_lost_cancellation()

    task = asyncio.create_task(swallowing_loop())
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done and task.cancelled()


def test_dcim_run_with_its_http_port_taken_stops_at_once_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = cdu_hall(tmp_path, cdus=1)
        path.write_text(path.read_text().replace("http:\n  enabled: false", f"http:\n  port: {port}"))
        assert f"port: {port}" in path.read_text()
        result: Any = subprocess.run([sys.executable, "-m", "dcim.app.cli", "run", "-c", str(path)], cwd=REPO,
                                     capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"dcim: cannot start: http api cannot listen on 127.0.0.1:{port}: " \
                                    "address already in use"
