"""Ingest: MQTT -> durable outbox -> InfluxDB, in batches, with retries.

It subscribes with an MQTT 5 shared subscription, `$share/{group}/{prefix}/+/+/+`, so several ingest workers
(in daemons, or alone with `dcim ingest`) split the messages between them; its session is persistent, so
messages published while it restarts wait in the broker. Each message's lines go to the ingest outbox on
disk at once; the writer task takes up to `batch_size` lines, writes them, and acknowledges them only after
the database said yes. A database that is down is retried with capped backoff (nothing lost while the
outage fits the outbox); a batch the database rejects is split in halves until the bad lines are isolated,
which are dropped, counted and logged, so one bad line never blocks the rest.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from dcim.app.config import Config
from dcim.app.instance import instance_tag
from dcim.app.publisher import CONNECTED, protocol, tls_context
from dcim.app.writers import RejectedWriteError, RetryableWriteError, Writer, make_writer
from dcim.core.backoff import Backoff
from dcim.core.lineproto import encode_batch
from dcim.core.metrics import REGISTRY
from dcim.core.outbox import Item, Outbox
from dcim.core.samples import Batch, Quality, Sample

log = structlog.get_logger(__name__)

RECEIVED = REGISTRY.counter("dcim_ingest_messages_total", "MQTT messages received by the ingest")
WRITTEN = REGISTRY.counter("dcim_ingest_lines_written_total", "Lines written to the database")
REJECTED = REGISTRY.counter("dcim_ingest_lines_rejected_total", "Lines the database refused (dropped)")
MALFORMED = REGISTRY.counter("dcim_ingest_messages_malformed_total", "MQTT messages that were not readable")

SKIP_KINDS = {"status", "daemon"}
SESSION_EXPIRY_S = 24 * 3600


def json_to_lines(payload: bytes) -> list[str]:
    """The JSON payload option back to line protocol (the publisher's `batch_json` format)."""
    data = json.loads(payload)
    tags = tuple(sorted((str(k), str(v)) for k, v in data["tags"].items()))
    samples = [
        Sample(data["device"], s["point"], s["value"], int(data["ts"]), Quality(s["quality"]), s.get("reason") or "",
               s.get("measurement") or data["kind"], tuple(sorted(s.get("tags", {}).items())))
        for s in data["samples"]
    ]
    return encode_batch(Batch(data["device"], data["kind"], int(data["ts"]), samples), tags)


def ingest_client_id(config: Config) -> str:
    """Stable across restarts (the broker session keeps what arrives meanwhile), distinct per instance."""
    return f"dcim-ingest-{instance_tag(config.state_dir)}-{config.ingest.group}"


class Ingest:
    def __init__(self, config: Config, outbox: Outbox, writer: Writer | None = None) -> None:
        if config.influxdb is None:
            raise ValueError("influxdb is not configured")
        if config.mqtt.host is None:
            raise ValueError("mqtt.host is not set")
        self.config = config
        self.influx = config.influxdb
        self.outbox = outbox
        self.writer = writer or make_writer(config.influxdb)
        # Without MQTT 5 there are no shared subscriptions: one ingest worker per broker then.
        shared = f"$share/{config.ingest.group}/" if config.mqtt.protocol == "5" else ""
        self.topic = f"{shared}{config.mqtt.prefix}/+/+/+"
        self.subscribed = asyncio.Event()
        self.written = 0
        self.rejected = 0
        self._last_message = 0.0
        self._malformed_topics: set[str] = set()

    # ---- MQTT side ----------------------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        mqtt = self.config.mqtt
        password = mqtt.password.get_secret_value() if mqtt.password else None
        v5 = mqtt.protocol == "5"
        connect_props = None
        if v5:
            connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            connect_props.SessionExpiryInterval = SESSION_EXPIRY_S
        return aiomqtt.Client(
            mqtt.host or "", mqtt.port,
            identifier=self.config.ingest.client_id or ingest_client_id(self.config),
            username=mqtt.username, password=password, keepalive=mqtt.keepalive,
            tls_context=tls_context(mqtt), protocol=protocol(mqtt),
            clean_session=None if v5 else False, clean_start=False, properties=connect_props, timeout=10,
        )

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
                    async for message in client.messages:
                        self.handle(str(message.topic), message.payload)
            except aiomqtt.MqttError as err:
                self.subscribed.clear()
                CONNECTED.set(0, role="ingest")
                if not down_logged:
                    log.warning("ingest: broker unavailable", error=str(err))
                    down_logged = True
                await asyncio.sleep(backoff.next())

    def handle(self, topic: str, payload: Any) -> None:
        self._last_message = asyncio.get_running_loop().time()
        RECEIVED.inc()
        kind = topic.split("/")[-2]
        if kind in SKIP_KINDS or not payload:
            return
        try:
            raw = bytes(payload)
            if raw.lstrip().startswith(b"{"):
                lines = [line.encode() for line in json_to_lines(raw)]
            else:
                raw.decode("utf-8")
                lines = [line for line in raw.split(b"\n") if line.strip()]
        except (ValueError, KeyError, TypeError) as err:
            MALFORMED.inc()
            if topic not in self._malformed_topics:
                self._malformed_topics.add(topic)
                log.warning("ingest: unreadable message dropped", topic=topic, error=str(err))
            return
        for line in lines:
            # Alarm events before bulk telemetry when the database comes back.
            self.outbox.put(topic, line, 0 if kind == "alarm" else 1)

    # ---- database side --------------------------------------------------------------------------------

    async def write_loop(self) -> None:
        await self.writer.open()
        backoff = Backoff(maximum=30.0)
        down_logged = False
        try:
            while True:
                items = await self.outbox.take(self.influx.batch_size)
                try:
                    await self._write(items)
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
                await self.outbox.ack(items)
                if len(items) < self.influx.batch_size:
                    # Let a small batch grow for a moment rather than writing line by line.
                    await asyncio.sleep(min(self.influx.flush_interval, 0.2))
        finally:
            await self.writer.close()

    async def _write(self, items: list[Item]) -> None:
        try:
            await self.writer.write([i.payload for i in items])
        except RejectedWriteError as err:
            if len(items) == 1:
                self.rejected += 1
                REJECTED.inc()
                log.warning("database rejected a line; dropped", error=str(err),
                            line=items[0].payload[:200].decode(errors="replace"))
                return
            half = len(items) // 2
            await self._write(items[:half])
            await self._write(items[half:])
            return
        self.written += len(items)
        WRITTEN.inc(len(items))

    async def drain(self, timeout: float, quiet: float = 0.5) -> bool:  # noqa: ASYNC109 - a shutdown budget
        """At shutdown: wait until no message came for `quiet` seconds and everything is written."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            idle = loop.time() - self._last_message >= quiet
            if idle and self.outbox.depth == 0:
                return True
            await asyncio.sleep(0.05)
        return False
