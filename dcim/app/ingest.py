"""Ingest: MQTT -> checks -> durable outbox -> InfluxDB, in batches, with retries.

It subscribes with an MQTT 5 shared subscription, `$share/{group}/{prefix}/+/+/+`, so several ingest workers
(in daemons, or alone with `dcim ingest`) split the messages between them; its session is persistent, so
messages published while it restarts wait in the broker.

Every message is checked before anything else touches it (`dcim.core.linecheck`): its size, then for JSON
its whole structure, then each line's syntax, types and timestamp. A message that is unusable as a whole is
dropped and counted by reason; a bad line inside a good message is dropped alone; what remains goes to the
ingest outbox on disk. Only then is the message acknowledged to the broker (manual PUBACK), so a process
killed at any moment loses nothing: the broker sends what was not acknowledged again, and InfluxDB stores a
point sent twice once. Dropped messages and lines can be kept in a bounded dead-letter file.

Inside a daemon that polls, the ingest takes that daemon's own readings in-process by default
(`ingest.source: local`): the publisher and the ingest read one durable journal (dcim.core.journal), each
through its own cursor, so a reading is encoded once, written to disk once, and never makes the round trip
out through the broker and back; the broker stays the wire for everyone else, and for ingest workers on other
hosts (`source: broker`, and always `dcim ingest`). Those payloads are the daemon's own encoding, so the
checks above (made for messages from anyone) are not run on them.

The writer task takes up to `batch_size` lines, writes them, and acknowledges them in the outbox only after
the database said yes. A database that is down is retried with capped backoff (nothing lost while the outage
fits the outbox). A refusal is rare after the checks (a field type conflict with what is stored): InfluxDB
then stores the rest of the request and says so ("partial write"), which costs nothing more. Any other
refusal is narrowed down by splitting the batch, within `max_bisect_requests` extra requests per batch; what
that budget cannot isolate is dropped and counted, so a bad batch never holds up the lines behind it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from dcim.app.config import Config
from dcim.app.instance import instance_tag
from dcim.app.publisher import CONNECTED, PRIORITY_EVENT, PRIORITY_TELEMETRY, status_batch, tls_context
from dcim.app.writers import RejectedWriteError, RetryableWriteError, Writer, make_writer
from dcim.core.backoff import Backoff
from dcim.core.linecheck import Invalid, Limits, check_line, json_lines
from dcim.core.lineproto import encode_batch
from dcim.core.metrics import REGISTRY
from dcim.core.outbox import Item, ItemQueue
from dcim.core.samples import Batch, DeviceStatus
from dcim.core.topology import Topology

log = structlog.get_logger(__name__)

RECEIVED = REGISTRY.counter("dcim_ingest_messages_total", "MQTT messages received by the ingest")
WRITTEN = REGISTRY.counter("dcim_ingest_lines_written_total", "Lines written to the database")
REJECTED = REGISTRY.counter("dcim_ingest_lines_rejected_total", "Lines the database refused (dropped)")
REQUESTS = REGISTRY.counter("dcim_ingest_write_requests_total", "Write requests sent to the database")
DROPPED = REGISTRY.counter("dcim_ingest_dropped_total", "Lines dropped by the ingest, by reason", ("reason",))
MESSAGES_DROPPED = REGISTRY.counter("dcim_ingest_messages_dropped_total",
                                    "MQTT messages dropped whole by the ingest, by reason", ("reason",))

SKIP_KINDS = {"status", "daemon"}
SESSION_EXPIRY_S = 24 * 3600
# After a write of fewer than batch_size lines, the write loop waits a moment for the next batch to grow,
# unless this fraction of batch_size (or more) is waiting already.
GROW_BELOW = 0.5
# Lines checked between two yields to the event loop: a 10 MB message never stalls the other tasks.
CHECK_CHUNK = 2000
# Messages taken from the client's queue for one outbox flush and their acknowledgements, within a byte
# bound, so good lines queued after a big message never wait for the next one's checks.
ACK_GROUP = 100
ACK_GROUP_BYTES = 1 << 20
# MQTT 5 Receive Maximum: messages the broker may send before this worker acknowledges one. With manual
# acknowledgement it bounds what waits in memory to RECEIVE_MAXIMUM x ingest.max_message_bytes.
RECEIVE_MAXIMUM = 20
# While the outbox's disk refuses writes: how often to look whether the lines went out after all.
DEGRADED_RECHECK_S = 0.5
# Topics remembered for "logged once" warnings; past the bound, warnings are only counted.
WARNED_TOPICS = 1000
DEAD_LETTER_PAYLOAD = 64 * 1024
DEAD_LETTER_LINES = 20


class DeadLetters:
    """A bounded append-only file of what the ingest dropped: JSON lines, the current file and one older.

    A failure to write (a full disk) is logged once and never stops the ingest.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._failed = False

    async def add(self, entry: dict[str, Any]) -> None:
        data = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
        await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        try:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            with self.path.open("ab") as file:
                file.write(data[: self.max_bytes])
            self._failed = False
        except OSError as err:
            if not self._failed:
                log.warning("ingest: dead-letter file not writable; dropping without a copy",
                            path=str(self.path), error=str(err))
                self._failed = True

    def payload(self, raw: bytes) -> str:
        # Bounded, and readable text whatever the bytes were.
        return raw[: min(DEAD_LETTER_PAYLOAD, self.max_bytes // 4)].decode("utf-8", errors="replace")


def ingest_client_id(config: Config) -> str:
    """Stable across restarts (the broker session keeps what arrives meanwhile), distinct per instance."""
    return f"dcim-ingest-{instance_tag(config.state_dir)}-{config.ingest.group}"


def _lines(item: Item) -> int:
    """Lines in an item: one from the broker path, a whole poll's from the local path."""
    return item.payload.count(b"\n") + 1


class Ingest:
    def __init__(self, config: Config, outbox: ItemQueue, writer: Writer | None = None, *, local: bool = False) -> None:
        if config.influxdb is None:
            raise ValueError("influxdb is not configured")
        if config.mqtt.host is None and not local:
            raise ValueError("mqtt.host is not set")
        self.config = config
        # In-process: fed by `put_local` (the daemon's own readings), subscribed to nothing.
        self.local = local
        self.influx = config.influxdb
        self.outbox = outbox
        self.writer = writer or make_writer(config.influxdb)
        # Without MQTT 5 there are no shared subscriptions: one ingest worker per broker then.
        shared = f"$share/{config.ingest.group}/" if config.mqtt.protocol == "5" else ""
        self.topic = f"{shared}{config.mqtt.prefix}/+/+/+"
        self.subscribed = asyncio.Event()
        self.written = 0
        self.rejected = 0
        self.dropped_lines = 0
        self.dropped_messages = 0
        self.requests = 0
        self._last_message = 0.0
        # Lines per outbox item, as seen: how many items make a batch of `batch_size` lines.
        self._lines_per_item = 1.0
        self._warned_topics: set[str] = set()
        self._rejections_logged = 0
        self.dead_letters = (
            DeadLetters(Path(config.state_dir) / "ingest-dead-letters.jsonl", config.ingest.dead_letter_max_bytes)
            if config.ingest.dead_letter else None
        )
        if local:
            self.subscribed.set()  # nothing to subscribe to: it takes what it is given from the start

    @property
    def queued(self) -> int:
        """Items put in the outbox since start (a line from the broker, a payload from this daemon, by anyone
        sharing its journal): with the outbox's depth, how many left it (the backpressure's measure of the
        database's pace)."""
        return self.outbox.put_total

    # ---- local side: the daemon's own readings ------------------------------------------------------

    def put_local(self, payload: bytes, priority: int) -> None:
        """A line-protocol payload this daemon encoded (the publisher's own): queued whole, never blocks."""
        self._last_message = asyncio.get_running_loop().time()
        self.outbox.put("local", payload, priority)

    # ---- MQTT side ----------------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        mqtt = self.config.mqtt
        password = mqtt.password.get_secret_value() if mqtt.password else None
        v5 = mqtt.protocol == "5"
        connect_props = None
        if v5:
            connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            connect_props.SessionExpiryInterval = SESSION_EXPIRY_S
            connect_props.ReceiveMaximum = RECEIVE_MAXIMUM
        client = aiomqtt.Client(
            mqtt.host or "", mqtt.port,
            identifier=self.config.ingest.client_id or ingest_client_id(self.config),
            username=mqtt.username, password=password, keepalive=mqtt.keepalive,
            tls_context=tls_context(mqtt),
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else False, clean_start=False, properties=connect_props, timeout=10,
        )
        # PUBACK by hand, once a message is on disk (`_consume`). Set before connecting: the broker sends what
        # waited in the session as soon as the connection is up. aiomqtt 2.x does not expose paho's option.
        client._client.manual_ack_set(True)
        return client

    async def receive(self) -> None:
        backoff = Backoff(maximum=self.config.mqtt.reconnect_max)
        down_logged = False
        while True:
            try:
                async with self._client() as client:
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    CONNECTED.set(1, role="ingest")
                    backoff.reset()
                    log.info("ingest subscribed", topic=self.topic)
                    down_logged = False
                    await self._consume(client)
            except aiomqtt.MqttError as err:
                self.subscribed.clear()
                CONNECTED.set(0, role="ingest")
                if not down_logged:
                    log.warning("ingest: broker unavailable", error=str(err))
                    down_logged = True
                await asyncio.sleep(backoff.next())

    async def _consume(self, client: aiomqtt.Client) -> None:
        """Check and queue what arrived, flush the outbox to disk, then acknowledge: never the other way round.

        Messages that already wait in the client's queue are taken together, so one disk commit serves them
        all. A message not acknowledged when the process dies is sent again by the broker (same client id,
        persistent session); the database stores a point written twice once.
        """
        messages = client.messages
        pending: list[aiomqtt.Message] = []
        size = 0
        while True:
            message = await anext(messages)
            big = len(message.payload) >= ACK_GROUP_BYTES
            if pending and big:
                # What came before a big message goes to disk, and on to the database, before its checks.
                await self._commit(client, pending)
                size = 0
            await self.accept(str(message.topic), message.payload)
            pending.append(message)
            size += len(message.payload)
            if not len(messages) or len(pending) >= ACK_GROUP or size >= ACK_GROUP_BYTES:
                await self._commit(client, pending)
                size = 0

    async def _commit(self, client: aiomqtt.Client, messages: list[aiomqtt.Message]) -> None:
        await self.outbox.flush()
        # A disk that refuses writes leaves the lines in memory, where the writer still takes them from: the
        # broker gets its acknowledgement once they are on disk after all, or all written to the database.
        # Meanwhile it holds the rest (at most RECEIVE_MAXIMUM unacknowledged here).
        while self.outbox.degraded and self.outbox.depth:
            await asyncio.sleep(DEGRADED_RECHECK_S)
            await self.outbox.flush()
        paho = client._client  # paho's ack(), see _client
        for message in messages:
            if message.qos > 0:
                paho.ack(message.mid, message.qos)
        messages.clear()

    def limits(self) -> Limits:
        ingest = self.config.ingest
        return Limits(now_ns=time.time_ns(), max_ahead_ns=int(ingest.max_clock_ahead * 1e9),
                      max_line_bytes=ingest.max_line_bytes, unsigned=self.influx.api != "v1")

    async def accept(self, topic: str, payload: Any) -> None:
        """Check one message and queue its good lines in the outbox (not yet flushed); never raises."""
        self._last_message = asyncio.get_running_loop().time()
        RECEIVED.inc()
        try:
            await self._accept(topic, payload)
        except Exception:  # a bug of ours must cost one message, not the ingest
            self.dropped_messages += 1
            MESSAGES_DROPPED.inc(reason="internal_error")
            if self._first_warning(topic):
                log.exception("ingest: message dropped on an internal error", topic=topic)

    async def _accept(self, topic: str, payload: Any) -> None:
        parts = topic.split("/")
        kind = parts[-2] if len(parts) >= 3 else ""
        if kind in SKIP_KINDS or not payload:
            return
        raw = payload if isinstance(payload, bytes) else str(payload).encode()
        if len(raw) > self.config.ingest.max_message_bytes:
            await self._dead_letter(topic, "too_large", raw)
            self._drop_message(topic, "too_large", f"{len(raw)} bytes")
            return
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            await self._dead_letter(topic, "not_utf8", raw)
            self._drop_message(topic, "not_utf8", str(err))
            return
        limits = self.limits()
        if raw.lstrip()[:1] == b"{":
            try:
                # json.loads of a big payload is one long call: in a thread, the event loop still gets turns.
                big = len(raw) >= ACK_GROUP_BYTES
                lines = await asyncio.to_thread(json_lines, raw, limits) if big else json_lines(raw, limits)
            except Invalid as err:
                await self._dead_letter(topic, err.reason, raw)
                self._drop_message(topic, err.reason, str(err))
                return
        else:
            lines = raw.split(b"\n")
        # Alarm events before bulk telemetry when the database comes back.
        priority = 0 if kind == "alarm" else 1
        dropped: Counter[str] = Counter()
        examples: list[tuple[str, str]] = []
        for start in range(0, len(lines), CHECK_CHUNK):
            if start:
                await asyncio.sleep(0)
            for line in lines[start:start + CHECK_CHUNK]:
                good, reason = check_line(line, limits)
                if good is not None:
                    self.outbox.put(topic, good, priority)
                elif reason is not None:
                    dropped[reason] += 1
                    if len(examples) < DEAD_LETTER_LINES:
                        examples.append((reason, line[:512].decode("utf-8", errors="replace")))
        if dropped:
            total = sum(dropped.values())
            self.dropped_lines += total
            for reason, count in dropped.items():
                DROPPED.inc(count, reason=reason)
            if self._first_warning(topic):
                log.warning("ingest: invalid lines dropped", topic=topic, dropped=dict(dropped),
                            kept=len(lines) - total, example=examples[0][1][:200])
            if self.dead_letters is not None:
                await self.dead_letters.add({"time": time.time(), "topic": topic, "reasons": dict(dropped),
                                             "lines": examples})

    def _first_warning(self, topic: str) -> bool:
        if topic in self._warned_topics or len(self._warned_topics) >= WARNED_TOPICS:
            return False
        self._warned_topics.add(topic)
        return True

    def _drop_message(self, topic: str, reason: str, detail: str) -> None:
        self.dropped_messages += 1
        MESSAGES_DROPPED.inc(reason=reason)
        if self._first_warning(topic):
            log.warning("ingest: message dropped", topic=topic, reason=reason, error=detail[:300])

    async def _dead_letter(self, topic: str, reason: str, raw: bytes) -> None:
        if self.dead_letters is not None:
            await self.dead_letters.add({"time": time.time(), "topic": topic, "reason": reason, "bytes": len(raw),
                                         "payload": self.dead_letters.payload(raw)})

    # ---- database side --------------------------------------------------------------------------------

    async def write_loop(self) -> None:
        await self.writer.open()
        backoff = Backoff(maximum=30.0)
        down_logged = False
        try:
            while True:
                items, lines = self._trim(await self.outbox.take(self._take_limit()))
                try:
                    await self._write(items, lines)
                except RetryableWriteError as err:
                    if not down_logged:
                        log.warning("database unavailable; buffering in the outbox",
                                    url=self.influx.url, error=str(err), queued=self.outbox.depth)
                        down_logged = True
                    await asyncio.sleep(backoff.next())
                    continue
                if down_logged:
                    log.info("database reachable again", url=self.influx.url, queued=self.outbox.depth)
                    down_logged = False
                backoff.reset()
                # Lines the database refused go too: a line found bad once is never sent again.
                await self.outbox.ack(items)
                pause = self.pause_after(lines)
                if pause:
                    await asyncio.sleep(pause)
        finally:
            await self.writer.close()

    def pause_after(self, lines: int) -> float:
        """Seconds the write loop waits after a write of `lines` lines: a moment for a small batch to grow,
        rather than writing line by line; none after a full batch, or when a large one waits already. (Past
        saturation the admission holds the outbox below a batch_size of lines, so every write was "small":
        the ingest waited 0.2 s after each one and stored no more than about 7,000 lines/s, whatever the
        database could take.)"""
        if lines >= self.influx.batch_size or self.outbox.depth * self._lines_per_item >= \
                self.influx.batch_size * GROW_BELOW:
            return 0.0
        return min(self.influx.flush_interval, 0.2)

    def _take_limit(self) -> int:
        return max(1, int(self.influx.batch_size / self._lines_per_item))

    def _trim(self, items: list[Item]) -> tuple[list[Item], int]:
        """At most `batch_size` lines (at least one item); what is left is taken again next time."""
        kept: list[Item] = []
        lines = 0
        for item in items:
            n = _lines(item)
            if kept and lines + n > self.influx.batch_size:
                break
            kept.append(item)
            lines += n
        if kept:
            self._lines_per_item = max(1.0, 0.8 * self._lines_per_item + 0.2 * lines / len(kept))
        return kept, lines

    async def _write(self, items: list[Item], lines: int) -> None:
        await self._write_part(items, lines, [self.config.ingest.max_bisect_requests])

    async def _write_part(self, items: list[Item], lines: int, budget: list[int]) -> None:
        """Write `items` (`lines` lines); on a refusal of the whole request, split it while `budget` (extra
        requests) lasts."""
        try:
            self.requests += 1
            REQUESTS.inc()
            await self.writer.write([i.payload for i in items])
        except RejectedWriteError as err:
            if err.partial:
                # The database stored the rest and said so: nothing to resend.
                refused = min(lines, max(1, err.dropped or 1))
                self._rejected(refused, "database", err, None)
                self._written(lines - refused)
            elif len(items) == 1:
                self._rejected(lines, "database", err, items[0])
            elif budget[0] < 2:
                self._rejected(lines, "database_unresolved", err, None)
            else:
                budget[0] -= 2
                half = len(items) // 2
                first = sum(_lines(i) for i in items[:half])
                await self._write_part(items[:half], first, budget)
                await self._write_part(items[half:], lines - first, budget)
            return
        self._written(lines)

    def _written(self, count: int) -> None:
        self.written += count
        WRITTEN.inc(count)

    def _rejected(self, count: int, reason: str, err: Exception, item: Item | None) -> None:
        self.rejected += count
        REJECTED.inc(count)
        DROPPED.inc(count, reason=reason)
        self._rejections_logged += 1
        # After validation this is rare; a database that refuses everything must still not flood the log.
        if self._rejections_logged <= 10 or self._rejections_logged % 1000 == 0:
            log.warning("database refused lines; dropped", lines=count, reason=reason, error=str(err),
                        line=item.payload[:200].decode(errors="replace") if item else None,
                        refusals=self._rejections_logged)

    async def drain(self, timeout: float, quiet: float = 0.5) -> bool:  # noqa: ASYNC109 - a shutdown budget
        """At shutdown: wait until no message came for `quiet` seconds and everything is written.

        The quiet time counts from the call at the earliest: what the daemon's publisher handed the broker
        just before is still on its way here. What comes later waits in the broker session, unacknowledged.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        while loop.time() < deadline:
            idle = loop.time() - max(self._last_message, started) >= quiet
            if idle and self.outbox.depth == 0:
                return True
            await asyncio.sleep(0.05)
        return False


class LocalFeed:
    """A pipeline sink that feeds the in-process ingest when the publisher does not (no MQTT, or MQTT with
    JSON payloads): it encodes each batch as line protocol, as the publisher would, and queues it."""

    def __init__(self, ingest: Ingest, topology: Topology) -> None:
        self.ingest = ingest
        self.topology = topology

    def on_batch(self, batch: Batch) -> None:
        lines = encode_batch(batch, self.topology.tags(batch.device))
        if lines:
            priority = PRIORITY_EVENT if batch.kind == "alarm" else PRIORITY_TELEMETRY
            self.ingest.put_local("\n".join(lines).encode(), priority)

    def on_status(self, status: DeviceStatus) -> None:
        self.on_batch(status_batch(status))
