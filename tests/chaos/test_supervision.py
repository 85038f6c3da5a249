"""Supervision: a task or a driver that raises never ends the daemon; /healthz tells the truth."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from dcim.app.poller import DeviceCoordinator
from dcim.app.supervise import RESTARTS, Supervisor
from dcim.core.pipeline import Pipeline
from dcim.core.samples import Batch, DeviceStatus, Quality, Sample, Value
from dcim.drivers.base import Driver
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.profiles import load_profile
from dcim.simulators.plant import Plant
from tests.chaos.daemonlib import health, healthy, http_port, log_events, metrics, polls, with_http
from tests.chaos.faults import faulty_device
from tests.e2e.harness import DaemonProcess, cdu_hall, load, simulators
from tests.helpers import wait_until


class RaisingDriver(Driver):
    """A driver with a bug: every read raises something no driver error covers."""

    reads = 0
    closes = 0

    async def connect(self) -> None:
        pass

    async def read(self) -> list[Sample]:
        self.reads += 1
        raise OverflowError("int too large to convert to float")

    async def write(self, point: str, value: Value) -> None:
        pass

    async def close(self) -> None:
        self.closes += 1


class Recorder:
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.statuses: list[DeviceStatus] = []

    def on_batch(self, batch: Batch) -> None:
        self.batches.append(batch)

    def on_status(self, status: DeviceStatus) -> None:
        self.statuses.append(status)


async def test_a_driver_that_raises_marks_the_device_offline_and_polling_goes_on() -> None:
    device = ModbusDevice(id="cdu-x", kind="cdu", protocol="modbus", profile="generic-cdu", interval=0.01)
    driver = RaisingDriver(device, load_profile("generic-cdu"))
    pipeline = Pipeline()
    recorder = Recorder()
    pipeline.add_sink(recorder)
    coordinator = DeviceCoordinator(device, driver, pipeline)
    with capture_logs() as logs:
        task = asyncio.create_task(coordinator.run())
        await wait_until(lambda: driver.reads >= 5, timeout=10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert coordinator.online is False
    assert coordinator.last_error == "unexpected error: OverflowError: int too large to convert to float"
    assert [s.online for s in recorder.statuses] == [False]  # the outage is reported once
    assert len(recorder.batches) >= 5
    for batch in recorder.batches:
        assert batch.samples and all(s.quality is Quality.BAD and "OverflowError" in s.reason for s in batch.samples)
    # The traceback once, not once per poll.
    assert [e["event"] for e in logs].count("device poll raised an unexpected error") == 1
    assert driver.closes >= 5  # each failure starts the next poll on a fresh connection


async def test_the_supervisor_restarts_a_failing_task_and_counts_it() -> None:
    supervisor = Supervisor(initial=0.01, maximum=0.02)
    runs = 0
    forever = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise KeyError("boom")
        await forever.wait()

    before = RESTARTS.get(task="flaky")
    with capture_logs() as logs:
        task = asyncio.create_task(supervisor.run("flaky", flaky))
        await wait_until(lambda: runs == 4, timeout=10)
        assert supervisor.dead() == []
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled(), "the cancellation must go through"
    assert RESTARTS.get(task="flaky") - before == 3
    assert supervisor.report()["flaky"]["restarts"] == 3
    assert supervisor.report()["flaky"]["last_error"] == "KeyError: 'boom'"
    failures = [e for e in logs if e["event"] == "task failed unexpectedly; restarting it"]
    assert len(failures) == 1 and failures[0]["exc_info"] is not None


async def test_a_task_waiting_for_its_restart_is_reported_dead() -> None:
    supervisor = Supervisor(initial=60.0, maximum=60.0)

    async def broken() -> None:
        raise RuntimeError("always")

    task = asyncio.create_task(supervisor.run("broken", broken))
    await wait_until(lambda: supervisor.dead() == ["broken"], timeout=10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_dcim_run_survives_a_driver_that_raises_on_every_poll(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    path = with_http(cdu_hall(tmp_path, cdus=3, interval="200ms"))
    config = load(path)
    async with simulators(config, Plant(config, frozen=True)):
        # cdu-2 becomes a device of the chaosfault plugin protocol, whose driver raises on every read.
        faulty_device(path, "cdu-2", "raise", monkeypatch)
        with DaemonProcess(path) as daemon:
            port = await wait_until(lambda: http_port(daemon), timeout=30, message=f"http port\n{daemon.log()}")
            # The bad device fails many polls in a row...
            first = await wait_until(lambda: _errors_at_least(port, "cdu-2", 10), timeout=60,
                                     message=f"cdu-2 failing polls\n{daemon.log()}")
            assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
            # ... and the good ones keep their interval meanwhile: each polled about as often as the bad
            # one (same interval), none failed.
            for good in ("cdu-1", "cdu-3"):
                assert polls(first, good, "error") == 0
                assert polls(first, good, "ok") >= polls(first, "cdu-2", "error") - 2, first
            # The bad device's poller is alive (it records its failures): healthy. Waited for, not probed
            # once: on a loaded machine a poll may come late enough to look stale for a moment.
            report = await wait_until(lambda: healthy(port), timeout=30, message=daemon.log())
            assert report["devices"]["cdu-2"]["online"] is False
            assert "RuntimeError: chaosfault driver bug" in report["devices"]["cdu-2"]["error"]
            assert report["devices"]["cdu-1"]["online"] is True and report["dead_tasks"] == []
            assert len(log_events(daemon, "device poll raised an unexpected error")) == 1
            assert daemon.stop() == 0, daemon.log()


async def _errors_at_least(port: int, device: str, count: int) -> Any:
    sample = await metrics(port)
    return sample if polls(sample, device, "error") >= count else None


async def test_healthz_is_200_without_systemd_and_503_when_a_poller_is_stuck(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    path = with_http(cdu_hall(tmp_path, cdus=2, interval="200ms"))
    config = load(path)
    async with simulators(config, Plant(config, frozen=True)):
        with DaemonProcess(path) as daemon:
            port = await wait_until(lambda: http_port(daemon), timeout=30, message=f"http port\n{daemon.log()}")

            async def healthy() -> dict[str, Any] | None:
                status, report = await health(port)
                online = all(d["online"] for d in report["devices"].values())
                return report if status == 200 and online else None

            report = await wait_until(healthy, timeout=30, message=f"200 with every device online\n{daemon.log()}")
            assert report["ok"] is True and report["dead_tasks"] == [] and report["stale_devices"] == []
            assert daemon.stop() == 0, daemon.log()

        # cdu-2 becomes a device of the chaosfault plugin protocol, whose driver hangs swallowing the
        # poll deadline's cancellation.
        faulty_device(path, "cdu-2", "stuck", monkeypatch)
        daemon.log_path.unlink()  # the next run's port, not this one's
        with DaemonProcess(path) as daemon:
            port = await wait_until(lambda: http_port(daemon), timeout=30, message=f"http port\n{daemon.log()}")

            async def unhealthy() -> dict[str, Any] | None:
                status, report = await health(port)
                return report if status == 503 else None

            report = await wait_until(unhealthy, timeout=30, message=f"503 for the stuck poller\n{daemon.log()}")
            assert report["ok"] is False and report["stale_devices"] == ["cdu-2"] and report["dead_tasks"] == []
            assert report["devices"]["cdu-1"]["online"] is True
            # The stuck driver lets the shutdown's cancellation through: a clean stop.
            assert daemon.stop() == 0, daemon.log()
