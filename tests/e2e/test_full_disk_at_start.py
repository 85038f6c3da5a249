"""A disk already full when the daemon starts: it starts degraded, as when the disk fills while it runs.

The state_dir is a small tmpfs mounted by the test (root needed; skipped with the reason elsewhere, failed
under CI=true), as in test_full_disk.py. A first `dcim run` makes the state_dir (its stores and the reserve),
then stops; the disk is filled to the last byte; the second `dcim run` gives the reserve up to open its
stores and runs: telemetry on MQTT, a pump failure in the HTTP API, on the MQTT alarm topic and on the
webhook, the outboxes degraded. Once the filler is deleted, what was kept in memory reaches the disk.
A state_dir that cannot hold even the lock file is one line and exit 1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dcim.app.instance import LOCK_NAME, RESERVE_BYTES, RESERVE_NAME
from dcim.simulators.plant import Plant
from tests.chaos.daemonlib import log_events
from tests.e2e.harness import REPO, DaemonProcess, cdu_hall, load, simulators
from tests.e2e.test_full_disk import (
    _degraded,
    _recovered,
    _stored_state,
    alive_on_a_full_disk,
    fill,
    small_disk,
    tmpfs,
)
from tests.e2e.test_restart_order import alarm_topics
from tests.e2e.test_rules_e2e import SECRET, rules_config
from tests.helpers import wait_until
from tests.receivers import HttpReceiver

pytestmark = pytest.mark.e2e

__all__ = ["small_disk"]  # the fixture, shared with test_full_disk.py

GAVE_UP = "state_dir's disk is full at start: gave up the reserve to open the stores"


async def test_a_disk_full_at_start_starts_degraded_and_recovers(tmp_path: Path, small_disk: Path, mosquitto: Any,
                                                                 http_receiver: HttpReceiver) -> None:
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text(SECRET)
    state = small_disk / "state"
    path = cdu_hall(tmp_path, cdus=1, interval="200ms", mqtt=mosquitto,
                    rules=rules_config(http_receiver, None, secret_file),
                    http={"enabled": True, "port": 0}, state_dir=str(state))
    config = load(path)
    plant = Plant(config, frozen=True)
    async with simulators(config, plant), alarm_topics(mosquitto.port) as topics, \
            aiohttp.ClientSession() as http:

        def polls() -> int:
            return sum(1 for t, _, _ in topics if "/cdu/" in t)

        # A first run on a disk with room: the state_dir, its stores and the reserve are made.
        with DaemonProcess(path) as first:
            await wait_until(lambda: polls() >= 3, timeout=30, message=f"telemetry on MQTT\n{first.log()}")
            await wait_until(lambda: (state / RESERVE_NAME).exists(), timeout=30, message=first.log())
            assert await asyncio.to_thread(first.stop) == 0, first.log()
        assert (state / RESERVE_NAME).stat().st_size == RESERVE_BYTES

        filler = fill(small_disk)
        with DaemonProcess(path) as daemon:
            # The log file goes on from the first run: this run's port is the second one reported.
            listening = await wait_until(lambda: log_events(daemon, "http api listening")[1:], timeout=30,
                                         message=daemon.log())
            port = int(listening[0]["port"])
            base = f"http://127.0.0.1:{port}"

            async def get(route: str) -> Any:
                async with http.get(base + route) as response:
                    return await (response.json() if route.startswith("/api") else response.text())

            seen = polls()
            await wait_until(lambda: polls() >= seen + 5, timeout=30,
                             message=f"telemetry after a start on a full disk\n{daemon.log()}")
            assert GAVE_UP in daemon.log()
            # The room the reserve made is soon taken: the outbox keeps telemetry in memory.
            await wait_until(lambda: _degraded(get), timeout=60,
                             message=f"an outbox reporting the full disk\n{daemon.log()}")
            await alive_on_a_full_disk(daemon, plant, get, polls, topics, http_receiver)

            filler.unlink()
            await wait_until(lambda: _recovered(get), timeout=60, message=f"outboxes writing again\n{daemon.log()}")
            await wait_until(lambda: _stored_state(state / config.rules.store) == "firing", timeout=30,
                             message="the firing alarm in the store on disk")
            assert await asyncio.to_thread(daemon.stop) == 0, daemon.log()
    log = daemon.log_path.read_text(errors="replace")
    assert "outbox disk refuses writes" in log and "outbox disk writable again" in log
    assert "Traceback" not in log


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dcim.app.cli", "run", "-c", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_a_full_disk_that_cannot_hold_the_lock_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A file system out of inodes as well as blocks: not even the state_dir can be made."""
    with tmpfs(tmp_path / "disk", "size=1m,nr_inodes=2") as disk:  # its root and the filler
        state = disk / "state"
        fill(disk)
        result = _run(cdu_hall(tmp_path, cdus=1, state_dir=str(state)))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"dcim: cannot start: state_dir {state} is not writable: No space left on device"]


def test_a_full_disk_where_dcim_never_ran_is_one_line_and_exit_1(tmp_path: Path, small_disk: Path) -> None:
    """Room for the lock file (an inode) but not for the stores, and no reserve made by an earlier run."""
    fill(small_disk)
    result = _run(cdu_hall(tmp_path, cdus=1, state_dir=str(small_disk)))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"dcim: cannot start: cannot open the stores in state_dir {small_disk}: database or disk is full "
        f"(the disk is full and there is no {RESERVE_NAME} to give up)"]
    assert (small_disk / LOCK_NAME).exists()
