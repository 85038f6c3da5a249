"""The real daemon under a NOTIFY_SOCKET this test listens on, as systemd would run it (Type=notify):

- READY=1 (with a STATUS= summary) once its first poll round is done,
- WATCHDOG=1 at the configured `systemd.watchdog_interval`,
- no WATCHDOG=1 while its event loop is stalled (a device of the chaosfault plugin protocol,
  tests/chaos/plugin, whose read blocks the loop once the test creates its trigger file), then pings again,
- STOPPING=1 and exit status 0 on SIGTERM,

all inside tests/systemd/sandbox.py: dcim.service's SystemCallFilter, RestrictAddressFamilies and
MemoryDenyWriteExecute applied by seccomp and PR_SET_MDWE (where the kernel and python3-seccomp have them).

Devices are served by `dcim simulate` in a process of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.chaos.faults import faulty_device, plugin_path
from tests.e2e.harness import DaemonProcess, cdu_hall
from tests.helpers import silent_servers, wait_until
from tests.systemd.syscalls import allowed_by

if TYPE_CHECKING:
    from tests.systemd.conftest import NotifyListener

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 0.2
STALL = 2.0

SANDBOX = Path(__file__).with_name("sandbox.py")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif("sdnotify" not in (ROOT / "dcim" / "app" / "daemon.py").read_text(),
                       reason="dcim/app/daemon.py does not use dcim.app.sdnotify yet (READY/WATCHDOG not wired)"),
]


async def _sigterm_stops(proc: asyncio.subprocess.Process, listener: NotifyListener, log_path: Path) -> None:
    """SIGTERM: STOPPING=1, then exit status 0."""
    proc.send_signal(signal.SIGTERM)
    await listener.wait_for("STOPPING", within=30)
    # The log is read only when the assertion fails.
    assert await asyncio.wait_for(proc.wait(), 30) == 0, log_path.read_text()[-4000:]  # noqa: ASYNC240


async def _killed(proc: asyncio.subprocess.Process) -> None:
    """Whatever failed, the process does not outlive the test."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_ready_watchdog_stall_and_stop(tmp_path: Path, notify_listener: NotifyListener, mosquitto: Any,
                                             influxdb_v1: Any) -> None:
    # The whole path (polls, rules, SQLite outboxes, MQTT, ingest, InfluxDB) runs inside the sandbox.
    path = cdu_hall(tmp_path, cdus=2, interval="250ms", mqtt=mosquitto,
                    influxdb={"url": influxdb_v1.url, "api": "v1", "database": influxdb_v1.database})
    raw = yaml.safe_load(path.read_text())
    raw["systemd"] = {"watchdog_interval": f"{int(INTERVAL * 1000)}ms"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    # `dcim run` gets its own file: cdu-2 is a chaosfault device there, whose read blocks the event loop for
    # STALL seconds once `trigger` exists (the simulators still serve the plain hall).
    run_path = tmp_path / "dcim-run.yaml"
    run_path.write_text(path.read_text())
    trigger = tmp_path / "stall-now"
    faulty_device(run_path, "cdu-2", "block", None, trigger=str(trigger), block_seconds=STALL)
    env = {**os.environ, "NOTIFY_SOCKET": notify_listener.path,
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": plugin_path(str(ROOT)),
           "DCIM_TEST_SYSCALLS": ",".join(allowed_by(ROOT / "systemd" / "dcim.service"))}
    for key in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(key, None)
    log_path = tmp_path / "dcim-run.log"
    with DaemonProcess(path, command="simulate") as simulate:
        await simulate.ready()  # its own "simulators ready" line: every socket bound, nothing probed
        with log_path.open("ab") as log:
            # Under dcim.service's syscall filter, address families and W^X memory (tests/systemd/sandbox.py).
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(SANDBOX), "dcim.app.cli", "run", "-c", str(run_path), env=env, cwd=ROOT,
                stdout=log, stderr=log)
        try:
            ready = await notify_listener.wait_for("READY", within=30)
            # The summary of the first poll round: every device counted.
            assert "2 devices" in ready.fields.get("STATUS", ""), ready.fields
            # Pings keep coming. Their rate is not asserted: gaps measured where the test reads bunch and
            # stretch on a loaded machine (the interval's handling is tested in test_sdnotify.py).
            pings = [await notify_listener.wait_for("WATCHDOG", within=10) for _ in range(6)]
            trigger.touch()
            after = [await notify_listener.wait_for("WATCHDOG", within=STALL + 10) for _ in range(4)]
            gaps = [b.at - a.at for a, b in itertools.pairwise([pings[-1], *after])]
            assert max(gaps) >= STALL * 0.9, f"no WATCHDOG gap during a {STALL} s stall: {gaps}"
            await wait_until(lambda: influxdb_v1.query('SELECT count("flow_lpm") FROM "cdu"'), timeout=30,
                             message="samples stored through MQTT and the ingest")
            await _sigterm_stops(proc, notify_listener, log_path)
            print(log_path.read_text().splitlines()[0])  # what the sandbox applied, for the record
        finally:
            await _killed(proc)
        simulate.stop()


async def test_ingest_is_ready_and_pings(tmp_path: Path, notify_listener: NotifyListener, mosquitto: Any,
                                         influxdb_v1: Any) -> None:
    """dcim-ingest.service is Type=notify too: `dcim ingest` must say READY and keep the watchdog fed, or
    systemd would fail its start and later kill it."""
    path = cdu_hall(tmp_path, mqtt=mosquitto, influxdb={"url": influxdb_v1.url, "api": "v1",
                                                        "database": influxdb_v1.database})
    raw = yaml.safe_load(path.read_text())
    raw["systemd"] = {"watchdog_interval": f"{int(INTERVAL * 1000)}ms"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "NOTIFY_SOCKET": notify_listener.path, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
           "DCIM_TEST_SYSCALLS": ",".join(allowed_by(ROOT / "systemd" / "dcim-ingest.service"))}
    for key in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(key, None)
    log_path = tmp_path / "dcim-ingest.log"
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SANDBOX), "dcim.app.cli", "ingest", "-c", str(path), env=env, cwd=ROOT,
            stdout=log, stderr=log)
    try:
        await notify_listener.wait_for("READY", within=30)
        for _ in range(3):
            await notify_listener.wait_for("WATCHDOG", within=10)
        await _sigterm_stops(proc, notify_listener, log_path)
    finally:
        await _killed(proc)


async def test_a_slow_first_round_asks_for_more_start_time(tmp_path: Path, notify_listener: NotifyListener) -> None:
    """READY waits for every device's first poll. A round of devices that do not answer (the network not up
    yet after a power cut) can outlast the unit's TimeoutStartSec: while it moves, the daemon asks for more
    start time (EXTEND_TIMEOUT_USEC) at each watchdog interval, and says how far the round is in STATUS."""
    async with silent_servers(3) as ports:
        path = cdu_hall(tmp_path, cdus=3, interval="250ms")
        raw = yaml.safe_load(path.read_text())
        for device, port in zip(raw["devices"], ports, strict=True):
            # One poll of each takes its deadline: 2 x 1 s and 0.25 s.
            device.update(port=port, timeout="1s", retries=1)
        raw["systemd"] = {"watchdog_interval": f"{int(INTERVAL * 1000)}ms"}
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        env = {**os.environ, "NOTIFY_SOCKET": notify_listener.path, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        for key in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(key, None)
        log_path = tmp_path / "dcim-run.log"
        with log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dcim.app.cli", "run", "-c",
                                                        str(path), env=env, cwd=ROOT, stdout=log, stderr=log)
        try:
            ready = await notify_listener.wait_for("READY", within=60)
            before = [m.fields for m in notify_listener.received[:-1]]
            extended = [f for f in before if "EXTEND_TIMEOUT_USEC" in f]
            assert extended, (before, log_path.read_text()[-4000:])
            assert all(int(f["EXTEND_TIMEOUT_USEC"]) >= 30_000_000 for f in extended), extended
            assert "first poll round: 0 of 3 devices polled" in [f.get("STATUS") for f in before], before
            assert "3 devices, 0 online" in ready.fields.get("STATUS", ""), ready.fields
            # After READY the watchdog takes over; no more start time is asked for.
            await notify_listener.wait_for("WATCHDOG", within=10)
            assert not [f for f in notify_listener.pending() if "EXTEND_TIMEOUT_USEC" in f]
            await _sigterm_stops(proc, notify_listener, log_path)
        finally:
            await _killed(proc)
