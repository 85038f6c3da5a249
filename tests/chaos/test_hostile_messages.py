"""Hostile MQTT messages against the daemon (`dcim run`, its ingest on the broker, real mosquitto and InfluxDB).

The four small JSON payloads that used to stop the daemon within a second, and a 10 MB message of 112,750
junk lines: the daemon keeps running, the good device's points in InfluxDB are exactly the polls it
published, and the junk costs the database no request at all (it used to cost two per line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from dcim.simulators.plant import Plant
from tests.e2e.harness import DaemonProcess, cdu_hall, load, simulators
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e
TS = 1_732_250_000_000_000_000
JUNK_LINES = 112_750

FOUR_PAYLOADS = {
    "tags-list": b'{"device":"e","kind":"cdu","ts":1,"tags":[],"samples":[]}',
    "value-object": b'{"device":"e","kind":"cdu","ts":%d,"tags":{},"samples":[{"point":"p","value":{"a":1},'
                    b'"quality":"good"}]}' % TS,
    "ts-1e400": b'{"device":"e","kind":"cdu","ts":1e400,"tags":{},"samples":[]}',
    "deep": b'{"device":"e","kind":"cdu","ts":1,"tags":{},"samples":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


def junk_message() -> bytes:
    """About 10 MB: random bytes without a blank (never a line), and lines one detail away from good ones."""
    rng = random.Random(10)
    alphabet = bytes(range(0x21, 0x7f)).replace(b"#", b"")
    lines = []
    for n in range(JUNK_LINES):
        match n % 4:
            case 0:
                lines.append(bytes(rng.choices(alphabet, k=rng.randrange(160, 260))))
            case 1:
                lines.append(b"cdu,device=junk-%d flow_lpm=1e400 %d" % (n, TS))
            case 2:
                lines.append(b"cdu,device=junk-%d,time=x flow_lpm=1 %d" % (n, TS))
            case _:
                lines.append(b"cdu,device=junk-%d flow_lpm=%d 1" % (n, n))
    return b"\n".join(lines)


class PollRecorder:
    """What the daemon published for each device: the timestamps of its polls, in the broker's order."""

    def __init__(self) -> None:
        self.polls: dict[str, list[int]] = {}
        self.messages = 0
        # Polls of cdu-1 the broker had passed on before each hostile message: what came after it was behind
        # it in the broker's order, so in the ingest's.
        self.hostile_at: dict[str, int] = {}

    async def run(self, port: int, ready: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe("dcim/hall-1/+/+", qos=1)
            await client.subscribe("dcim/x/#", qos=1)
            ready.set()
            async for message in client.messages:
                site, kind, device = str(message.topic).split("/")[1:4]
                if site == "x":
                    self.hostile_at[device] = len(self.polls.get("cdu-1", []))
                    continue
                if kind in ("status", "daemon") or not isinstance(message.payload, bytes):
                    continue
                self.messages += 1
                # The CDU's polls only: derived plant points, rack metrics and alarms are other series.
                if kind != "cdu":
                    continue
                for line in message.payload.splitlines():
                    self.polls.setdefault(device, []).append(int(line.rsplit(b" ", 1)[1]))


@contextlib.asynccontextmanager
async def recording(port: int) -> AsyncIterator[PollRecorder]:
    recorder = PollRecorder()
    ready = asyncio.Event()
    task = asyncio.create_task(recorder.run(port, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def log_events(daemon: DaemonProcess) -> list[dict[str, Any]]:
    events = []
    for line in daemon.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def write_requests(influx: Any) -> int:
    """Write requests InfluxDB itself has counted (its httpd statistics)."""
    return sum(int(row.get("writeReq") or 0) for row in influx.query("SHOW STATS FOR 'httpd'"))


async def test_hostile_messages_neither_stop_the_daemon_nor_hold_up_good_data(
        tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    # The daemon's ingest takes from the broker here (as `dcim ingest` does), where the hostile messages are.
    path = cdu_hall(tmp_path, cdus=1, mqtt=mosquitto,
                    influxdb={"url": influxdb_v1.url, "api": "v1", "database": "dcim"}, ingest={"source": "broker"})
    config = load(path)
    plant = Plant(config, frozen=True)
    junk = junk_message()
    assert len(junk) > 10_000_000
    async with simulators(config, plant), recording(mosquitto.port) as recorder:
        with DaemonProcess(path) as daemon:
            await wait_until(lambda: influxdb_v1.query("SELECT count(flow_lpm) FROM cdu"), timeout=60,
                             ignore=(Exception,))
            # Messages first: a request counted after this snapshot carries lines of a message counted after
            # it, or of one of the few still on their way when it was taken (the slack below).
            messages_before = recorder.messages
            requests_before = write_requests(influxdb_v1)
            async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
                for name, payload in FOUR_PAYLOADS.items():
                    await client.publish(f"dcim/x/cdu/{name}", payload, qos=1)
                await client.publish("dcim/x/cdu/junk", junk, qos=1)

            def junk_done() -> list[dict[str, Any]]:
                return [e for e in log_events(daemon) if e.get("topic") == "dcim/x/cdu/junk"]

            [junk_event] = await wait_until(junk_done, timeout=120)
            assert junk_event["kept"] == 0
            assert sum(junk_event["dropped"].values()) == JUNK_LINES
            dropped = {e["topic"].rsplit("/", 1)[1]: e["reason"] for e in log_events(daemon)
                       if e.get("event") == "ingest: message dropped"}
            assert dropped == {"tags-list": "timestamp", "value-object": "json_schema", "ts-1e400": "json_schema",
                               "deep": "json_too_deep"}
            # Good polls keep coming after the junk, and it is the same process that took all of it.
            await wait_until(lambda: len(recorder.polls["cdu-1"]) >= recorder.hostile_at["junk"] + 3, timeout=60)
            assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
            # The junk cost the database nothing: at most one request per good message in the meantime
            # (checked line by line at its old cost of two requests per line, it would be some 225,000).
            good_messages = recorder.messages - messages_before
            assert write_requests(influxdb_v1) - requests_before <= good_messages + 3
            assert daemon.stop() == 0, daemon.log()

        def stored() -> list[int]:
            # Every field: a poll that found the simulator busy is stored as quality="bad", without readings.
            rows = influxdb_v1.query("SELECT * FROM cdu WHERE device = 'cdu-1'")
            return sorted(int(r["time"]) for r in rows)

        # Every poll the daemon published is in the database, once; nothing of the junk is. The shutdown
        # drains the broker for a bounded time; what arrived after waits, unacknowledged, for the next
        # ingest with the same client id: one is started to take it (usually there is nothing left).
        with DaemonProcess(path, command="ingest") as ingest:
            await wait_until(lambda: "ingest subscribed" in ingest.log(), timeout=60)
            try:
                await wait_until(lambda: stored() == sorted(set(recorder.polls["cdu-1"])), timeout=60)
            except AssertionError:
                polls, got = set(recorder.polls["cdu-1"]), stored()
                raise AssertionError(f"{len(polls)} polls published, {len(got)} stored; missing "
                                     f"{sorted(polls - set(got))[:5]}, extra {sorted(set(got) - polls)[:5]}"
                                     f"\n{ingest.log()}") from None
            assert ingest.stop() == 0, ingest.log()
    # Including the polls that were behind the junk in the broker's (and so the ingest's) order.
    after_junk = recorder.polls["cdu-1"][recorder.hostile_at["junk"]:]
    assert len(after_junk) >= 3 and set(after_junk) <= set(stored())
    assert not influxdb_v1.query("SELECT count(*) FROM cdu WHERE device =~ /^(e|junk)/")
