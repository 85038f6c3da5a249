"""The ingest on its own: bad lines isolated and dropped, good ones kept; unreadable messages; JSON payloads;
several workers sharing one subscription; hostile messages; the bound on bisection; no loss on kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from aiohttp import web

from dcim.app.config import Config, IngestConfig, parse_config
from dcim.app.ingest import DeadLetters, Ingest
from dcim.core.journal import Outbox
from dcim.simulators.plant import Plant
from tests.e2e.harness import DaemonProcess, cdu_hall, expected_cdu_values, load, simulators
from tests.helpers import stored_rows, wait_until

pytestmark = pytest.mark.e2e
TS = 1_700_000_000_000_000_000


def ingest_settings(tmp_path: Path, mosquitto: Any, influx_url: str, worker: str = "w1",
                    **ingest: Any) -> dict[str, Any]:
    return {
        "site": {"id": "hall-1"},
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
        "influxdb": {"url": influx_url, "api": "v1", "database": "dcim", "flush_interval": "100ms"},
        "ingest": {"client_id": f"test-ingest-{worker}", **ingest},
        "state_dir": str(tmp_path / worker),
    }


def ingest_config(tmp_path: Path, mosquitto: Any, influx: Any, worker: str = "w1", **ingest: Any) -> Config:
    return parse_config(ingest_settings(tmp_path, mosquitto, influx.url, worker, **ingest))


@contextlib.asynccontextmanager
async def running_ingest(config: Config) -> AsyncIterator[Ingest]:
    outbox = Outbox(Path(config.state_dir) / "ingest.sqlite", name="ingest", max_items=100_000)
    await outbox.open()
    ingest = Ingest(config, outbox)
    tasks = [asyncio.create_task(outbox.run()), asyncio.create_task(ingest.receive()),
             asyncio.create_task(ingest.write_loop())]
    try:
        await asyncio.wait_for(ingest.subscribed.wait(), 10)
        yield ingest
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await outbox.close()


async def publish(port: int, topic: str, *payloads: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


async def test_rejected_line_is_dropped_and_the_rest_kept(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    config = ingest_config(tmp_path, mosquitto, influxdb_v1)
    async with running_ingest(config) as ingest:
        await publish(mosquitto.port, "dcim/hall-1/cdu/cdu-1", f"cdu,device=cdu-1 flow_lpm=1.5 {TS}".encode())
        await wait_until(lambda: ingest.written >= 1, timeout=10)
        # A field type conflict (string into a float field) between two good lines, in one message.
        payload = "\n".join([f"cdu,device=cdu-1 flow_lpm=2.5 {TS + 1}", f'cdu,device=cdu-1 flow_lpm="oops" {TS + 2}',
                             f"cdu,device=cdu-1 flow_lpm=3.5 {TS + 3}"]).encode()
        await publish(mosquitto.port, "dcim/hall-1/cdu/cdu-1", payload)
        await wait_until(lambda: ingest.written + ingest.rejected >= 4, timeout=10)
    rows = influxdb_v1.query("SELECT flow_lpm FROM cdu")
    assert sorted(r["flow_lpm"] for r in rows) == [1.5, 2.5, 3.5]
    assert ingest.rejected == 1
    # InfluxDB stored the two good lines of the refused request and said so ("partial write"): no resending.
    assert ingest.requests == 2


async def test_unreadable_message_is_dropped_not_fatal(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    config = ingest_config(tmp_path, mosquitto, influxdb_v1)
    async with running_ingest(config) as ingest:
        await publish(mosquitto.port, "dcim/hall-1/cdu/cdu-1", b"\xff\xfe not text", b"{not json",
                      f"cdu,device=cdu-1 flow_lpm=7.0 {TS}".encode())
        await wait_until(lambda: ingest.written >= 1, timeout=10)
    assert [r["flow_lpm"] for r in influxdb_v1.query("SELECT flow_lpm FROM cdu")] == [7.0]


async def test_two_workers_split_one_shared_subscription(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    first = ingest_config(tmp_path, mosquitto, influxdb_v1, "w1")
    second = ingest_config(tmp_path, mosquitto, influxdb_v1, "w2")
    async with running_ingest(first) as a, running_ingest(second) as b:
        lines = [f"cdu,device=cdu-{n % 4} flow_lpm={n}.0 {TS + n}".encode() for n in range(200)]
        await publish(mosquitto.port, "dcim/hall-1/cdu/x", *lines)
        await wait_until(lambda: a.written + b.written >= 200, timeout=20)
        assert a.written > 0 and b.written > 0, "both workers should take a share"
        assert a.written + b.written == 200, "each message goes to one worker only"
    assert influxdb_v1.query("SELECT count(flow_lpm) FROM cdu")[0]["count"] == 200


async def test_json_payload_option_end_to_end(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    # The daemon's ingest takes from the broker here: the JSON payloads are what it reads.
    path = cdu_hall(tmp_path, cdus=1, mqtt=mosquitto,
                    influxdb={"url": influxdb_v1.url, "api": "v1", "database": "dcim"}, ingest={"source": "broker"})
    text = path.read_text().replace("prefix: dcim", "prefix: dcim\n  payload: json")
    path.write_text(text)
    config = load(path)
    assert config.mqtt.payload == "json"
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        with DaemonProcess(path) as daemon:
            rows = await stored_rows(influxdb_v1, "SELECT * FROM cdu ORDER BY time DESC LIMIT 1",
                                     ("flow_lpm", "reservoir_level", "leak"))
            assert daemon.stop() == 0, daemon.log()
    expected = expected_cdu_values(plant, "cdu-1")
    assert rows[0]["flow_lpm"] == pytest.approx(expected["flow_lpm"])
    assert rows[0]["reservoir_level"] == expected["reservoir_level"]
    assert rows[0]["leak"] is False


async def test_local_ingest_stores_the_daemons_readings_without_any_broker(tmp_path: Path, influxdb_v1: Any) -> None:
    """ingest.source: local (the default): a daemon with a database and no MQTT at all stores its readings,
    status and all, in-process."""
    path = cdu_hall(tmp_path, cdus=1, influxdb={"url": influxdb_v1.url, "api": "v1", "database": "dcim"})
    config = load(path)
    assert config.mqtt.host is None and config.ingest.source == "local"
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        with DaemonProcess(path) as daemon:
            rows = await stored_rows(influxdb_v1, "SELECT * FROM cdu ORDER BY time DESC LIMIT 1",
                                     ("flow_lpm",))
            status = await stored_rows(influxdb_v1, "SELECT * FROM device_status", ("online",))
            assert daemon.stop() == 0, daemon.log()
    expected = expected_cdu_values(plant, "cdu-1")
    assert rows[0]["flow_lpm"] == pytest.approx(expected["flow_lpm"])
    assert rows[0]["device"] == "cdu-1"
    assert status[0]["device"] == "cdu-1" and status[0]["online"] is True


def dead_letters(config: Config) -> list[dict[str, Any]]:
    path = Path(config.state_dir) / "ingest-dead-letters.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_invalid_lines_are_dropped_one_by_one_without_a_round_trip(
        tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    config = ingest_config(tmp_path, mosquitto, influxdb_v1, dead_letter=True)
    good = [f"cdu,device=cdu-1 flow_lpm={n}.5 {TS + n}" for n in range(5)]
    bad = [f"cdu,device=cdu-1 flow_lpm=1e400 {TS}", "\x01junk", f"cdu,device=cdu-1 time=1 {TS}",
           "cdu,device=cdu-1 flow_lpm=1 1", f"cdu,device=a,device=b flow_lpm=1 {TS}", f"cdu flow_lpm=yes {TS}"]
    payload = "\n".join(line for pair in zip(good, bad, strict=False) for line in pair) + "\n" + bad[-1]
    async with running_ingest(config) as ingest:
        await publish(mosquitto.port, "dcim/hall-1/cdu/cdu-1", payload.encode())
        await wait_until(lambda: ingest.written >= 5, timeout=10)
    assert ingest.requests == 1, "bad lines are dropped before the database sees them"
    assert (ingest.written, ingest.rejected, ingest.dropped_lines, ingest.dropped_messages) == (5, 0, 6, 0)
    assert sorted(r["flow_lpm"] for r in influxdb_v1.query("SELECT flow_lpm FROM cdu")) == [0.5, 1.5, 2.5, 3.5, 4.5]
    [entry] = dead_letters(config)
    assert entry["topic"] == "dcim/hall-1/cdu/cdu-1"
    assert entry["reasons"] == {"not_finite": 1, "syntax": 1, "reserved_name": 1, "timestamp": 1,
                                "duplicate_tag": 1, "bad_value": 1}
    assert [reason for reason, _ in entry["lines"]] == list(entry["reasons"])


HOSTILE = [
    # The four small JSON payloads that each used to stop the daemon.
    b'{"device":"e","kind":"cdu","ts":1,"tags":[],"samples":[]}',
    b'{"device":"e","kind":"cdu","ts":%d,"tags":{},"samples":[{"point":"p","value":{"a":1},"quality":"good"}]}' % TS,
    b'{"device":"e","kind":"cdu","ts":1e400,"tags":{},"samples":[]}',
    b'{"device":"e","kind":"cdu","ts":1,"tags":{},"samples":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b"\xff\xfe not text",
    b"cdu,device=e f=1 " + b"9" * 300_000,  # over the configured message size
]


async def test_hostile_messages_are_dropped_whole(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    config = ingest_config(tmp_path, mosquitto, influxdb_v1, dead_letter=True, max_message_bytes=200_000)
    async with running_ingest(config) as ingest:
        await publish(mosquitto.port, "dcim/x/cdu/e", *HOSTILE, f"cdu,device=cdu-1 flow_lpm=7.0 {TS}".encode())
        await wait_until(lambda: ingest.written >= 1, timeout=10)
    assert ingest.dropped_messages == len(HOSTILE)
    assert [e["reason"] for e in dead_letters(config)] == [
        "timestamp", "json_schema", "json_schema", "json_too_deep", "not_utf8", "too_large"]
    assert all(len(e["payload"]) <= 64 * 1024 for e in dead_letters(config))
    assert [r["flow_lpm"] for r in influxdb_v1.query("SELECT flow_lpm FROM cdu")] == [7.0]


class RefusingDatabase:
    """An InfluxDB /write endpoint that refuses a whole request holding `poison` (as 2.x does on a parse
    error), and records what it was sent."""

    def __init__(self, poison: bytes) -> None:
        self.poison = poison
        self.bodies: list[bytes] = []
        self.stored: set[bytes] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _write(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        if self.poison in body:
            return web.json_response({"error": "unable to parse: invalid field format"}, status=400)
        self.stored.update(body.split(b"\n"))
        return web.Response(status=204)

    async def __aenter__(self) -> RefusingDatabase:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/write", self._write)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)  # port 0: bound before anyone uses it
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_bisection_is_bounded_and_a_bad_line_is_never_resent(tmp_path: Path, mosquitto: Any) -> None:
    async with RefusingDatabase(b"device=poison") as database:
        settings = ingest_settings(tmp_path, mosquitto, database.url, max_bisect_requests=8)
        settings["influxdb"]["batch_size"] = 1000
        config = parse_config(settings)
        lines = [f"cdu,device=cdu-1 flow_lpm={n}.0 {TS + n}".encode() for n in range(1000)]
        lines[617] = f"cdu,device=poison flow_lpm=1.0 {TS}".encode()
        async with running_ingest(config) as ingest:
            await publish(mosquitto.port, "dcim/hall-1/cdu/cdu-1", b"\n".join(lines))
            await wait_until(lambda: ingest.written + ingest.rejected >= 1000, timeout=20)
            assert ingest.requests <= 1 + 8, "no more than the budget of extra requests"
            # Four levels of halving: the poisoned line is lost with at most 1000/16 neighbours, not more.
            assert 1 <= ingest.rejected <= 63
            assert ingest.written == len(database.stored) == 1000 - ingest.rejected
            sent = len(database.bodies)
            last = f"cdu,device=cdu-1 flow_lpm=9.0 {TS + 5000}".encode()
            await publish(mosquitto.port, "dcim/hall-1/cdu/cdu-1", last)
            await wait_until(lambda: ingest.written + ingest.rejected >= 1001, timeout=10)
        assert len(database.bodies) == sent + 1
        assert b"poison" not in database.bodies[-1], "a line refused once is never sent again"


async def test_kill_9_while_messages_flow_loses_nothing(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    """PUBACK only once a message is on disk: a kill -9 at any moment leaves each message either in the
    outbox or unacknowledged at the broker, which sends it again to the restarted worker (same client id)."""
    settings = ingest_settings(tmp_path, mosquitto, influxdb_v1.url)
    settings |= {"http": {"enabled": False}, "logging": {"level": "info", "format": "json"}}
    path = tmp_path / "ingest.yaml"
    path.write_text(yaml.safe_dump(settings))
    total = 3000

    def stored() -> int:
        rows = influxdb_v1.query("SELECT count(flow_lpm) FROM cdu")
        return int(rows[0]["count"]) if rows else 0

    first = DaemonProcess(path, command="ingest").start()
    try:
        await wait_until(lambda: "ingest subscribed" in first.log(), timeout=60)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            for n in range(total):
                await client.publish(f"dcim/hall-1/cdu/cdu-{n % 3}",
                                     f"cdu,device=cdu-{n % 3} flow_lpm={n}.0 {TS + n}".encode(), qos=1)
                if n == total // 3:
                    # Killed in full flow: what was just published is in the broker, in flight, or being
                    # checked and queued; the rest is published while the worker is dead.
                    assert first.process is not None
                    first.process.send_signal(signal.SIGKILL)
                    first.process.wait()
    finally:
        first.__exit__()
    with DaemonProcess(path, command="ingest") as second:
        await wait_until(lambda: stored() >= total, timeout=120, message="every message, once restarted")
        assert second.stop() == 0, second.log()
    assert stored() == total


async def test_dead_letter_file_is_bounded(tmp_path: Path) -> None:
    letters = DeadLetters(tmp_path / "dead.jsonl", max_bytes=4096)
    for n in range(200):
        await letters.add({"n": n, "payload": letters.payload(b"x" * 10_000)})
    check_bounded(tmp_path)


def check_bounded(directory: Path) -> None:
    files = sorted(directory.iterdir())
    assert [f.name for f in files] == ["dead.jsonl", "dead.jsonl.1"]
    assert all(f.stat().st_size <= 4096 for f in files)
    assert json.loads((directory / "dead.jsonl").read_text().splitlines()[-1])["n"] == 199


def test_settings_in_the_docs_load() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "ingest.md").read_text()
    block = text.split("```yaml\n")[1].split("```")[0]
    ingest = IngestConfig.model_validate(yaml.safe_load(block)["ingest"])
    assert ingest.dead_letter and ingest.max_clock_ahead == 3600.0


async def test_big_json_payload_is_read_whole(tmp_path: Path, mosquitto: Any, influxdb_v1: Any) -> None:
    samples = [{"point": "current_a", "value": n / 10, "quality": "good", "measurement": "pdu_outlet",
                "tags": {"outlet": str(n)}} for n in range(20_000)]
    payload = json.dumps({"device": "pdu-1", "kind": "pdu", "ts": TS, "tags": {"device": "pdu-1"},
                          "samples": samples}).encode()
    assert len(payload) > 1 << 20  # read in a thread: the event loop keeps its turns meanwhile
    config = ingest_config(tmp_path, mosquitto, influxdb_v1)
    async with running_ingest(config) as ingest:
        await publish(mosquitto.port, "dcim/hall-1/pdu/pdu-1", payload)
        await wait_until(lambda: ingest.written >= 20_000, timeout=60)
    assert ingest.dropped_lines == 0
    assert influxdb_v1.query("SELECT count(current_a) FROM pdu_outlet")[0]["count"] == 20_000


async def test_the_write_loop_waits_for_a_batch_to_grow_only_while_little_waits(tmp_path: Path) -> None:
    """After a write smaller than batch_size the loop waits a moment for the next batch to grow, but not when
    half a batch or more waits already: past saturation the admission holds the outbox below batch_size, and
    waiting after every write held the ingest at about 7,000 lines/s whatever the database could take."""
    config = parse_config({"site": {"id": "hall-1"}, "state_dir": str(tmp_path),
                           "influxdb": {"url": "http://127.0.0.1:1", "api": "v1", "batch_size": 5000,
                                        "flush_interval": "1s"}})
    outbox = Outbox(tmp_path / "ingest.sqlite", name="ingest", max_items=100_000)
    await outbox.open()
    try:
        ingest = Ingest(config, outbox, local=True)  # the daemon's own ingest (ingest.source: local)
        for n in range(10):
            outbox.put("m", b"cdu,device=cdu-%d x=1 1" % n)
        assert ingest.pause_after(3000) == 0.2  # a small write, little waiting: let the next batch grow
        assert ingest.pause_after(5000) == 0.0  # a full batch: straight on
        for n in range(3000):
            outbox.put("m", b"cdu,device=cdu-%d x=1 1" % n)
        assert ingest.pause_after(3000) == 0.0  # a small write, but more than half a batch waits
    finally:
        await outbox.close()
