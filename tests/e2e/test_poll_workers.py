"""`workers:`: the drivers of polled devices run in poll worker processes, the rest stays in the daemon.

On the project's simulators over their real protocols (a Modbus CDU, an SNMP PDU, an OPC UA chiller in poll
mode): every device polled through a worker gives the plant's values, a write through the guard reaches the
device from its worker and is verified, the workers' driver metrics are in the daemon's /metrics, and a
worker killed with SIGKILL fails its devices' polls (offline, BAD samples: never silent) until it is started
again, counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import marshal
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.app import pollworkers
from dcim.app.config import Config
from dcim.app.daemon import Daemon
from dcim.app.pollworker import ANSWER, METRICS, Framed, FrameError
from dcim.app.pollworkers import RemoteDriver, WorkerProcess, worker_count, worker_of
from dcim.core.samples import Quality
from dcim.drivers.base import Subscriber
from dcim.drivers.profiles import load_profile
from tests.chaos.daemonlib import get
from tests.e2e.harness import DaemonProcess, Recorder, simulators
from tests.helpers import wait_until
from tests.writes.rig import CountingPlant, hall, load, running

pytestmark = pytest.mark.e2e


@contextlib.asynccontextmanager
async def daemon_with_workers(tmp_path: Path, workers: int) -> AsyncIterator[tuple[Daemon, CountingPlant, Recorder]]:
    config: Config = load(hall(tmp_path, chiller=True, http=True, workers=workers))
    plant = CountingPlant(config)
    recorder = Recorder()
    async with simulators(config, plant), running(config) as daemon:
        daemon.pipeline.add_sink(recorder)
        yield daemon, plant, recorder


def good(recorder: Recorder, device: str) -> dict[str, Any]:
    """The device's last batch that has a good value, point -> value."""
    for batch in reversed(recorder.batches.get(device, [])):
        values = {s.point: s.value for s in batch.samples if s.quality is Quality.GOOD and not s.tags}
        if values:
            return values
    return {}


async def test_devices_polled_in_workers_read_write_and_report(tmp_path: Path) -> None:
    async with daemon_with_workers(tmp_path, 2) as (daemon, plant, recorder):
        assert daemon.poll_workers is not None
        drivers = {d: c.driver for d, c in daemon.coordinators.items()}
        assert all(isinstance(d, RemoteDriver) for d in drivers.values()), drivers
        await wait_until(lambda: all(c.online for c in daemon.coordinators.values()), timeout=30,
                         message="every device online through its worker")
        # The plant's values, through the worker's driver and back.
        cdu = await wait_until(lambda: good(recorder, "cdu-1"), timeout=10)
        assert cdu["supply_temp_c"] == pytest.approx(plant.values("cdu-1")["supply_temp_c"], abs=0.01)
        pdu = await wait_until(lambda: good(recorder, "pdu-1"), timeout=10)
        assert pdu["power_w"] == pytest.approx(plant.values("pdu-1")["power_w"], rel=0.01)
        assert await wait_until(lambda: good(recorder, "chiller-1"), timeout=10)
        # A write through the one guarded path: sent by the worker, read back and verified.
        result = await daemon.write("cdu-1", "flow_setpoint_lpm", 300, origin="test")
        assert result.outcome == "verified", result
        assert ("cdu-1", "flow_setpoint_lpm", 300.0) in plant.received
        # /healthz says which worker polls what; /metrics has the workers' driver series.
        assert daemon.http is not None and daemon.http.port is not None
        status, body = await get(daemon.http.port, "/healthz")
        health = json.loads(body)
        assert status == 200 and health["ok"] is True, body
        workers = health["poll_workers"]
        assert workers["count"] == 2 and workers["running"] == 2
        assert sum(w["devices"] for w in workers["workers"].values()) == 3
        cdu_port = daemon.config.device("cdu-1").port  # type: ignore[attr-defined]
        port = daemon.http.port

        async def metrics_with_the_workers_series() -> str | None:
            _, body = await get(port, "/metrics")
            text = body.decode()
            return text if f'dcim_modbus_requests_total{{gateway="127.0.0.1:{cdu_port}",result="ok"}}' in text else None

        metrics = await wait_until(metrics_with_the_workers_series, timeout=10, interval=0.2,
                                   message="the worker's Modbus metrics in the daemon's /metrics")
        assert metrics is not None and "dcim_poll_workers_running 2" in metrics


def daemon_metrics(daemon: Daemon) -> str:
    from dcim.core.metrics import REGISTRY

    return REGISTRY.render()


async def test_a_killed_worker_fails_its_devices_visibly_and_is_started_again(tmp_path: Path) -> None:
    async with daemon_with_workers(tmp_path, 2) as (daemon, _plant, recorder):
        assert daemon.poll_workers is not None
        await wait_until(lambda: all(c.online for c in daemon.coordinators.values()), timeout=30,
                         message="every device online")
        worker = daemon.poll_workers.workers[worker_of(daemon.config.device("cdu-1"), 2)]
        assert worker.pid is not None
        killed, restarts = worker.pid, worker.restarts
        seen, polled = len(recorder.status), len(recorder.batches.get("cdu-1", []))
        os.kill(killed, signal.SIGKILL)
        # The CDU's polls fail (offline with the reason, BAD samples), not silence.
        down = await wait_until(
            lambda: [s for s in recorder.status[seen:] if s.device == "cdu-1" and not s.online], timeout=30,
            message="cdu-1 offline after its worker was killed")
        assert "poll worker" in down[0].error, down[0]
        bad = [b for b in recorder.batches.get("cdu-1", [])[polled:] if b.samples and all(s.quality is Quality.BAD
                                                                                  for s in b.samples)]
        assert bad, "no BAD batch while the worker was down"
        # Started again, counted, and the device polled online there.
        await wait_until(lambda: worker.restarts > restarts and worker.up and worker.pid != killed, timeout=30,
                         message="worker started again")
        await wait_until(lambda: daemon.coordinators["cdu-1"].online, timeout=30, message="cdu-1 online again")
        assert daemon.poll_workers.status()["workers"][str(worker.index)]["restarts"] == worker.restarts
        assert f'dcim_poll_worker_restarts_total{{worker="{worker.index}"}}' in daemon_metrics(daemon)


def test_auto_is_one_worker_per_cpu_but_the_daemons() -> None:
    assert worker_count("auto", cpus=1) == 0
    assert worker_count("auto", cpus=2) == 1
    assert worker_count("auto", cpus=16) == 15
    assert worker_count(3) == 3


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff\xff" + b"x" * 16,                 # a length past MAX_FRAME: the stream is out of step
    b"\x00\x00\x00\x03abc",                          # not marshal
    b"\x00\x00\x00\x05" + marshal.dumps(12345)[:5],  # marshal, but not a message
])
def test_a_frame_that_is_not_ours_closes_the_channel(garbage: bytes) -> None:
    got: list[tuple[Any, ...]] = []
    lost: list[BaseException | None] = []
    channel = Framed(got.append, lost.append)
    transport = FakeTransport()
    channel.connection_made(transport)
    message = marshal.dumps((ANSWER, 7, [("p", 1.0, 1, "good", "", "cdu", ())]))
    channel.data_received(len(message).to_bytes(4, "big") + message[:10])  # split across reads
    channel.data_received(message[10:] + garbage)
    assert got == [(ANSWER, 7, [("p", 1.0, 1, "good", "", "cdu", ())])]
    assert transport.closed and len(lost) == 1 and isinstance(lost[0], FrameError), lost


async def test_the_workers_do_not_outlive_a_daemon_killed_with_sigkill(tmp_path: Path) -> None:
    path = hall(tmp_path, http=True, workers=2)
    config = load(path)
    async with simulators(config, CountingPlant(config)):
        with DaemonProcess(path) as daemon:
            await daemon.ready("first poll round done", timeout=60)
            port = config.http.port
            _, body = await get(port, "/healthz")
            pids = [w["pid"] for w in json.loads(body)["poll_workers"]["workers"].values()]
            assert len(pids) == 2 and all(pids), body
            assert daemon.process is not None
            daemon.process.kill()
            daemon.process.wait()

            def gone() -> bool:
                return not any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in pids)

            await wait_until(gone, timeout=20, message="poll workers gone after the daemon's SIGKILL")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"


async def test_a_subscription_stays_in_the_daemon(tmp_path: Path) -> None:
    path = hall(tmp_path, chiller=True, workers=1)
    raw = yaml.safe_load(path.read_text())
    for device in raw["devices"]:
        if device["id"] == "chiller-1":
            device["mode"] = "subscribe"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load(path)
    async with simulators(config, CountingPlant(config)), running(config) as daemon:
        chiller = daemon.coordinators["chiller-1"].driver
        assert not isinstance(chiller, RemoteDriver) and isinstance(chiller, Subscriber)
        assert isinstance(daemon.coordinators["cdu-1"].driver, RemoteDriver)
        await wait_until(lambda: all(c.online for c in daemon.coordinators.values()), timeout=30,
                         message="the subscription and the polled devices online")


async def test_a_pdu_on_snmpv3_keeps_its_keys_in_a_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The device crosses to the worker with its secrets (a JSON dump would have sent them masked)."""
    monkeypatch.setenv("DCIM_TEST_SNMP_AUTH", "auth-key-4-tests")
    monkeypatch.setenv("DCIM_TEST_SNMP_PRIV", "priv-key-4-tests")
    path = hall(tmp_path, workers=1)
    raw = yaml.safe_load(path.read_text())
    for device in raw["devices"]:
        if device["id"] == "pdu-1":
            device.update({"version": "3", "user": "dcim-v3", "auth_protocol": "sha256",
                           "auth_key": "env:DCIM_TEST_SNMP_AUTH", "priv_protocol": "aes128",
                           "priv_key": "env:DCIM_TEST_SNMP_PRIV", "timeout": "2s", "deadline": "5s"})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load(path)
    plant = CountingPlant(config)
    recorder = Recorder()
    async with simulators(config, plant), running(config) as daemon:
        daemon.pipeline.add_sink(recorder)
        assert isinstance(daemon.coordinators["pdu-1"].driver, RemoteDriver)
        pdu = await wait_until(lambda: good(recorder, "pdu-1"), timeout=30, message="pdu-1 read over SNMPv3")
        assert pdu["power_w"] == pytest.approx(plant.values("pdu-1")["power_w"], rel=0.01)


async def test_a_profile_edited_since_the_daemon_started_is_refused_by_a_restarted_worker(tmp_path: Path) -> None:
    """The daemon's guard checks writes against the profile it loaded: a worker started later that finds another
    map on disk makes no driver with it (the device is BAD, with the reason) rather than write by another map."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    source = load_profile("generic-cdu")
    (profiles / "site-cdu.yaml").write_text(yaml.safe_dump({**source.model_dump(mode="json", exclude_none=True),
                                                            "name": "site-cdu"}, sort_keys=False))
    path = hall(tmp_path, workers=1, profile_dirs=[str(profiles)])
    raw = yaml.safe_load(path.read_text())
    raw["devices"][0]["profile"] = "site-cdu"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load(path)
    async with simulators(config, CountingPlant(config)), running(config) as daemon:
        await wait_until(lambda: daemon.coordinators["cdu-1"].online, timeout=30, message="cdu-1 online")
        edited = yaml.safe_load((profiles / "site-cdu.yaml").read_text())
        edited["points"][0]["scale"] = 1000
        (profiles / "site-cdu.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        assert daemon.poll_workers is not None
        worker = daemon.poll_workers.workers[0]
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        await wait_until(lambda: "differs from the one the daemon loaded" in daemon.coordinators["cdu-1"].last_error,
                         timeout=60, message="the restarted worker refused the edited profile")
        assert not daemon.coordinators["cdu-1"].online


async def test_a_hung_worker_is_killed_and_started_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker alive but silent (SIGSTOP here; a call that never returns in the field) answers nothing and its
    requests pile up: past the heartbeat's bound it is killed and started again, and its devices come back."""
    monkeypatch.setattr(pollworkers, "HUNG_SECONDS", 3.0)
    async with daemon_with_workers(tmp_path, 1) as (daemon, _plant, _recorder):
        assert daemon.poll_workers is not None
        await wait_until(lambda: all(c.online for c in daemon.coordinators.values()), timeout=30,
                         message="every device online")
        worker = daemon.poll_workers.workers[0]
        assert worker.pid is not None
        stopped, restarts = worker.pid, worker.restarts
        os.kill(stopped, signal.SIGSTOP)
        try:
            await wait_until(lambda: not daemon.coordinators["cdu-1"].online, timeout=30,
                             message="cdu-1 offline while its worker is stopped")
            await wait_until(lambda: worker.restarts > restarts and worker.up and worker.pid != stopped, timeout=60,
                             message="the stopped worker killed and started again")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)
        await wait_until(lambda: all(c.online for c in daemon.coordinators.values()), timeout=30,
                         message="every device online again")
        assert _state(stopped) == "zombie"  # gone


@pytest.mark.parametrize("snapshot", [
    [1, 2],                                                      # not a dict
    {"t_total": ("counter", "help")},                             # a family cut short
    {"t_total": ("counter", "help", ("device",), {(): 1.0}, {})},  # a series without its label
    {"t_total": ("counter", "help", ("device",), {(7,): 1.0}, {})},  # a label value that is not text
])
def test_a_malformed_snapshot_closes_the_channel_and_never_reaches_the_metrics(snapshot: Any) -> None:
    worker = WorkerProcess(0, "info", "auto")
    lost: list[BaseException | None] = []
    channel = Framed(worker._on_message, lost.append)
    transport = FakeTransport()
    channel.connection_made(transport)
    good = marshal.dumps((METRICS, 0, {"t_total": ("counter", "help", ("device",), {("cdu-1",): 2.0}, {})}))
    bad = marshal.dumps((METRICS, 0, snapshot))
    channel.data_received(b"".join(len(m).to_bytes(4, "big") + m for m in (good, bad)))
    assert transport.closed and len(lost) == 1 and isinstance(lost[0], FrameError), lost
    assert worker.snapshot == {"t_total": ("counter", "help", ("device",), {("cdu-1",): 2.0}, {})}
