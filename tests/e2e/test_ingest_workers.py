"""`ingest.workers`: `dcim run` starts `dcim ingest` worker processes and keeps them running.

Real processes throughout: the daemon, its two workers, Mosquitto, InfluxDB 1.x and the Modbus simulator. The
workers split the broker's messages (MQTT 5 shared subscription); one is killed with SIGKILL while polls are
being stored, the daemon starts it again, and every good poll the daemon made is stored once: the killed
worker's messages not yet on its disk are delivered again by the broker to its session (same client id), and
what it had on its disk is written after the restart. At SIGTERM the workers stop with the daemon.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from dcim.simulators.plant import Plant
from tests.chaos.daemonlib import final_good_polls, health, http_port, metrics, ok_polls_at_least, polls, with_http
from tests.e2e.harness import DaemonProcess, cdu_hall, load, simulators
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by the daemon) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def workers(port: int) -> dict[str, Any]:
    _, report = await health(port)
    found: dict[str, Any] = report["ingest_workers"]
    return found


async def test_workers_store_every_poll_through_a_kill_and_stop_with_the_daemon(
        tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    path = with_http(cdu_hall(tmp_path, cdus=1, interval="200ms", mqtt=mosquitto,
                              influxdb={"url": influxdb_v1.url, "api": "v1", "database": "dcim"},
                              ingest={"workers": 2}))
    config = load(path)
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        with DaemonProcess(path) as daemon:
            port = await wait_until(lambda: http_port(daemon), timeout=60, message=f"http port\n{daemon.log()}")
            status = await wait_until(lambda: _subscribed(port), timeout=60, message=daemon.log())
            pids = {k: w["pid"] for k, w in status["workers"].items()}
            assert len(set(pids.values())) == 2 and all(alive(pid) for pid in pids.values()), status
            # The in-process ingest does not run: the workers store.
            assert "ingest-outbox.sqlite" not in os.listdir(config.state_dir)
            await wait_until(lambda: influxdb_v1.query("SELECT count(flow_lpm) FROM cdu"), timeout=60,
                             ignore=(Exception,), message=daemon.log())

            victim = pids["0"]
            made_before = polls(await metrics(port), "cdu-1", "ok")
            os.kill(victim, signal.SIGKILL)
            restarted = await wait_until(lambda: _restarted(port, "0", victim), timeout=60, message=daemon.log())
            assert alive(restarted["pid"])
            assert restarted["last_exit"] == "signal SIGKILL"
            # Ten more polls after the kill (counted, not timed), then the device stops answering: the count of
            # good polls is final.
            await wait_until(lambda: ok_polls_at_least(port, "cdu-1", made_before + 10), timeout=60,
                             message=daemon.log())
            made = await final_good_polls(port, plant, "cdu-1", daemon)
            rows = await wait_until(
                lambda: (r := influxdb_v1.query("SELECT flow_lpm FROM cdu")) and len(r) >= made and r,
                timeout=90, ignore=(Exception,), message=f"{made} polls stored\n{daemon.log()}")
            final = await workers(port)
            assert daemon.stop() == 0, daemon.log()
    stamps = [int(r["time"]) for r in rows]
    assert len(rows) == made == len(set(stamps))
    # The workers stopped with the daemon (SIGTERM, their outboxes drained), none left behind.
    assert not any(alive(w["pid"]) for w in final["workers"].values() if w["pid"])
    assert "ingest worker exited; starting it again" in daemon.log()


async def _subscribed(port: int) -> dict[str, Any] | None:
    status = await workers(port)
    return status if status["subscribed"] and all(w["pid"] for w in status["workers"].values()) else None


async def _restarted(port: int, worker: str, old_pid: int) -> dict[str, Any] | None:
    entry: dict[str, Any] = (await workers(port))["workers"][worker]
    return entry if entry["pid"] not in (None, old_pid) and entry["restarts"] >= 1 else None



def test_workers_need_a_broker_and_a_database(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = cdu_hall(tmp_path, cdus=1, ingest={"workers": 2})
    result = subprocess.run([sys.executable, "-m", "dcim.app.cli", "check", "-c", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "ingest.workers needs mqtt.host" in result.stdout + result.stderr
