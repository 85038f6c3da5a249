"""Simulator -> `dcim run` -> mosquitto -> ingest -> database, for real, both database APIs.

- InfluxDB 1.6 through the v1 /write endpoint (InfluxDB before 1.8);
- VictoriaMetrics through influxdb-client's v2 write API.
Every point of the profile read back from the database equals the simulator's value after scaling, with the
right tags.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from dcim.simulators.plant import Plant
from tests.e2e.harness import DaemonProcess, cdu_hall, expected_cdu_values, load, simulators
from tests.helpers import stored_rows, wait_until

pytestmark = pytest.mark.e2e


def assert_equal_values(stored: dict[str, Any], expected: dict[str, Any], *, where: str) -> None:
    for name, want in expected.items():
        assert name in stored, f"{where}: {name} missing from the database"
        got = stored[name]
        if isinstance(want, bool):
            assert got == want or got == float(want), f"{where}: {name} = {got!r}, expected {want!r}"
        elif isinstance(want, str):
            assert got == want, f"{where}: {name} = {got!r}, expected {want!r}"
        else:
            assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9), f"{where}: {name} = {got}, expected {want}"


async def test_cdu_points_reach_influxdb_v1(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    path = cdu_hall(tmp_path, mqtt=mosquitto, influxdb={"url": influxdb_v1.url, "api": "v1", "database": "dcim"})
    config = load(path)
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        with DaemonProcess(path) as daemon:
            for device in ("cdu-1", "cdu-2"):
                rows = await stored_rows(
                    influxdb_v1, f"SELECT * FROM cdu WHERE device='{device}' ORDER BY time DESC LIMIT 1",
                    expected_cdu_values(plant, device), message=f"{device} rows in InfluxDB\n{daemon.log()}")
                row = rows[0]
                assert_equal_values(row, expected_cdu_values(plant, device), where=device)
                tags = influxdb_v1.query(f"SHOW TAG VALUES FROM cdu WITH KEY IN (\"site\", \"room\", \"row\") "
                                         f"WHERE device='{device}'")
                assert {(t["key"], t["value"]) for t in tags} == {
                    ("site", "hall-1"), ("room", "dh1"), ("row", f"R{device[-1]}")}
                assert row.get("quality") is None
            assert daemon.stop() == 0, daemon.log()


async def test_cdu_points_reach_victoriametrics_v2_api(tmp_path: Path, mosquitto: Any, victoria_metrics: Any) -> None:
    path = cdu_hall(tmp_path, mqtt=mosquitto, influxdb={"url": victoria_metrics.url, "api": "v2",
                                                         "org": "dcim", "bucket": "dcim"})
    config = load(path)
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        with DaemonProcess(path) as daemon:
            expected = expected_cdu_values(plant, "cdu-1")
            # VictoriaMetrics stores numbers (booleans as 0/1) and drops string fields such as enums.
            numeric = {k: v for k, v in expected.items() if not isinstance(v, str)}

            def stored() -> dict[str, Any]:
                series = victoria_metrics.export('{device="cdu-1"}')
                found = {s["metric"]["__name__"].removeprefix("cdu_"): s["values"][-1] for s in series
                         if s["metric"]["__name__"].startswith("cdu_")}
                return found if set(numeric) <= set(found) else {}

            found = await wait_until(stored, timeout=30, ignore=(Exception,),
                                     message=f"cdu-1 series in VictoriaMetrics\n{daemon.log()}")
            assert_equal_values(found, numeric, where="cdu-1")
            labels = next(s["metric"] for s in victoria_metrics.export('{__name__="cdu_flow_lpm",device="cdu-1"}'))
            assert labels["site"] == "hall-1" and labels["room"] == "dh1" and labels["row"] == "R1"
            assert daemon.stop(signal.SIGINT) == 0, daemon.log()


class Polls:
    """The polls at the broker, as (device, timestamp) pairs of the CDU lines a subscriber received."""

    def __init__(self, watcher: aiomqtt.Client) -> None:
        self.watcher = watcher
        self.seen: set[tuple[str, str]] = set()

    async def _receive(self, enough: Callable[[], bool]) -> None:
        if enough():
            return
        async for message in self.watcher.messages:
            device = str(message.topic).rsplit("/", 1)[-1]
            for line in bytes(message.payload).decode().splitlines():  # type: ignore[arg-type]
                self.seen.add((device, line.rsplit(" ", 1)[1]))
            if enough():
                return

    async def until(self, n: int) -> None:
        """Receive until `n` polls were seen."""
        await self._receive(lambda: len(self.seen) >= n)

    async def covering(self, stored: set[tuple[str, str]]) -> None:
        """What a stopped daemon published is at the broker: receive until every poll in the database was seen,
        however slowly it comes. A poll stored and never published leaves it after 60 s (no wait for a loaded
        machine), and the test's comparison names it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await self._receive(lambda: stored <= self.seen)


@contextlib.asynccontextmanager
async def watched_hall(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> AsyncIterator[tuple[Path, Polls]]:
    """Two CDUs polled every 200 ms into MQTT and InfluxDB (the configuration's path), their simulators
    running, and a subscriber to their polls."""
    path = cdu_hall(tmp_path, mqtt=mosquitto, influxdb={"url": influxdb_v1.url, "api": "v1", "database": "dcim"},
                    interval="200ms")
    config = load(path)
    plant = Plant(config, frozen=True)
    async with simulators(config, plant), aiomqtt.Client("127.0.0.1", mosquitto.port) as watcher:
        await watcher.subscribe("dcim/hall-1/cdu/+", qos=1)
        yield path, Polls(watcher)


def stored_polls(influxdb_v1: Any) -> set[tuple[str, str]]:
    return {(r["device"], str(r["time"])) for r in influxdb_v1.query("SELECT flow_lpm, device FROM cdu")}


async def test_sigterm_loses_nothing(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    """Every line published before SIGTERM is in the database afterwards, and nothing else is."""
    async with watched_hall(tmp_path, mosquitto, influxdb_v1) as (path, polls):
        with DaemonProcess(path) as daemon:
            await asyncio.wait_for(polls.until(20), timeout=30)
            assert daemon.stop(signal.SIGTERM, timeout=15) == 0, daemon.log()
        stored = stored_polls(influxdb_v1)
        await polls.covering(stored)

    published = polls.seen
    assert published, "nothing was published"
    assert stored == published, (
        f"{len(published - stored)} published but not stored, {len(stored - published)} stored but not published")


async def test_kill_9_leaves_the_broker_and_the_database_the_same_polls(tmp_path: Path, mosquitto: Any,
                                                                        influxdb_v1: Any) -> None:
    """One journal feeds the publisher and the in-process ingest; the publisher's acknowledgements wait (up
    to 2 s) for the ingest's, then go to disk by themselves. With the database away for longer than that, a
    kill -9 in full flow, and a restart on the same state with the database back: every poll either
    consumer had reaches the other (what the publisher had sent may come twice), so the polls at the broker
    and in the database are the same set."""
    async with watched_hall(tmp_path, mosquitto, influxdb_v1) as (path, polls):
        first = DaemonProcess(path).start()
        try:
            await asyncio.wait_for(polls.until(10), timeout=60)
            influxdb_v1.stop()
            # Ten polls a second (two CDUs at 200 ms): 40 more take 4 s, past the 2 s the publisher waits.
            await asyncio.wait_for(polls.until(len(polls.seen) + 40), timeout=60)
        finally:
            first.stop(signal.SIGKILL)
            influxdb_v1.start()
        with DaemonProcess(path) as second:
            await asyncio.wait_for(polls.until(len(polls.seen) + 10), timeout=60)
            await wait_until(lambda: len(stored_polls(influxdb_v1)) >= len(polls.seen),
                             timeout=60, ignore=(Exception,), message=second.log())
            assert second.stop(signal.SIGTERM, timeout=15) == 0, second.log()
        stored = stored_polls(influxdb_v1)
        await polls.covering(stored)
    published = polls.seen
    assert stored == published, (
        f"{len(published - stored)} published but not stored, {len(stored - published)} stored but not published")
