"""Outages: a device that stops answering, a broker that goes away, a database that goes away.

Nothing is lost while an outage fits the outboxes; a dead device is marked and never delays the others.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from dcim.core.samples import Quality
from dcim.simulators.plant import Plant
from tests.chaos.daemonlib import final_good_polls, http_port, metrics, ok_polls_at_least, polls, with_http
from tests.e2e.harness import DaemonProcess, cdu_hall, daemon_in_process, load, simulators
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


async def test_dead_device_goes_offline_marks_samples_and_recovers(tmp_path: Path) -> None:
    config = load(cdu_hall(tmp_path, interval="200ms"))  # no broker: the pipeline alone
    async with daemon_in_process(config) as (_daemon, plant, recorder):
        plant.inject("cdu-1", "no_response")
        offline = await wait_until(
            lambda: [s for s in recorder.status if s.device == "cdu-1" and not s.online], timeout=10)
        assert "no answer" in offline[0].error or "timeout" in offline[0].error.lower()
        bad = await wait_until(lambda: [b for b in recorder.batches["cdu-1"]
                                        if b.samples and all(s.quality is Quality.BAD for s in b.samples)])
        assert {s.point for s in bad[0].samples} >= {"supply_temp_c", "flow_lpm", "leak"}
        assert all(s.reason for s in bad[0].samples)
        # The other CDU keeps its interval while cdu-1 is dead: counted, not timed. Each dead poll of cdu-1
        # waits out its 300 ms timeout, longer than the 200 ms interval both share, so a cdu-2 held up by
        # cdu-1 would make at most one poll per dead one; free, it makes more, whatever the machine's load.
        dead_before, before = len(recorder.batches["cdu-1"]), len(recorder.batches["cdu-2"])
        await wait_until(lambda: len(recorder.batches["cdu-1"]) >= dead_before + 5, timeout=30)
        dead_polls = len(recorder.batches["cdu-1"]) - dead_before
        assert len(recorder.batches["cdu-2"]) - before >= dead_polls, (dead_polls, recorder.batches["cdu-2"][before:])
        assert all(s.quality is Quality.GOOD for b in recorder.batches["cdu-2"] for s in b.samples)
        # Logged once: one offline status however many polls failed.
        assert sum(1 for s in recorder.status if s.device == "cdu-1" and not s.online) == 1
        plant.clear("cdu-1")
        await wait_until(lambda: (recorder.status[-1].device == "cdu-1" and recorder.status[-1].online)
                         or any(s.device == "cdu-1" and s.online for s in recorder.status[len(offline):]),
                         timeout=15)
        last = recorder.batches["cdu-1"][-1]
        assert all(s.quality is Quality.GOOD for s in last.samples)


@pytest.mark.parametrize(("outage", "logged"), [("broker", "broker unavailable"),
                                                 ("database", "database unavailable")])
async def test_outage_loses_nothing(tmp_path: Path, mosquitto: Any, influxdb_v1: Any, outage: str,
                                    logged: str) -> None:
    """Polls made while the broker (or the database) is away wait in the daemon's outbox (or the ingest's)
    and arrive once it is back: the stored polls have no gap."""
    path = with_http(cdu_hall(tmp_path, cdus=1, interval="200ms", mqtt=mosquitto,
                              influxdb={"url": influxdb_v1.url, "api": "v1", "database": "dcim"}))
    config = load(path)
    server = mosquitto if outage == "broker" else influxdb_v1
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        with DaemonProcess(path) as daemon:
            port = await wait_until(lambda: http_port(daemon), timeout=30, message=f"http port\n{daemon.log()}")
            await wait_until(lambda: influxdb_v1.query("SELECT count(flow_lpm) FROM cdu"), timeout=30,
                             ignore=(Exception,), message=daemon.log())
            server.stop()
            polls_before = polls(await metrics(port), "cdu-1", "ok")
            # The outage lasts until ten more polls were made (counted, not timed).
            await wait_until(lambda: ok_polls_at_least(port, "cdu-1", polls_before + 10), timeout=60,
                             message=daemon.log())
            server.start()
            back = asyncio.get_running_loop().time()  # for the figures printed below, never asserted
            # Freeze the count: the device stops answering, so the good polls made are final.
            made = await final_good_polls(port, plant, "cdu-1", daemon)
            rows = await wait_until(
                lambda: (r := influxdb_v1.query("SELECT flow_lpm FROM cdu")) and len(r) >= made and r,
                timeout=60, ignore=(Exception,), message=f"{made} polls stored\n{daemon.log()}")
            caught_up = asyncio.get_running_loop().time() - back
            assert daemon.process is not None
            peak = _peak_rss_mib(daemon.process.pid)
            assert daemon.stop() == 0, daemon.log()
    # Every good poll stored once: nothing lost, nothing doubled.
    stamps = [int(r["time"]) for r in rows]
    print(f"{outage} outage: {made} good polls made, {len(rows)} rows stored, {len(set(stamps))} distinct; "
          f"all stored {caught_up:.1f} s after the {outage} was back; daemon peak RSS {peak:.0f} MiB")
    assert len(rows) == made == len(set(stamps))
    assert logged in daemon.log()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0

