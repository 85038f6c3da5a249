"""MQTT publisher: the pipeline's samples to the broker, through a durable outbox, at QoS 1.

Topics (docs/architecture.md, wire formats):
    {prefix}/{site}/{kind}/{device}          one poll's samples: line protocol (default) or JSON
    {prefix}/{site}/status/{device}          retained JSON: {"online": bool, "error": "...", "ts": ...}
    {prefix}/{site}/device_status/{device}   the same change as line protocol (`device_status`, stored)
    {prefix}/{site}/alarms/{subject}/{rule}  retained JSON while the alarm is active; cleared when resolved
    {prefix}/{site}/daemon/{client id}       retained "online"; the broker's last will sets "offline"

The sink side (`on_batch`, `on_status`, `alarm_changed`) never blocks: it encodes and puts into the outbox.
The sender task (`run`) takes from the outbox, publishes, waits for every PUBACK, and only then acknowledges
the items, so a broker outage loses nothing while it fits the outbox's bound. It speaks MQTT through the
project's own client (dcim.app.mqttwire), not aiomqtt and paho, whose per-message objects were a fifth of
the daemon's CPU at a thousand devices.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl

import structlog

from dcim.app.config import MqttConfig
from dcim.app.mqttwire import PACKET_TOO_LARGE, PROTOCOL_5, PROTOCOL_311, MqttClient, MqttError, Will
from dcim.core.aio import reraise_lost_cancellation
from dcim.core.backoff import Backoff
from dcim.core.events import AlarmEvent, AlarmState
from dcim.core.lineproto import encode_batch
from dcim.core.metrics import REGISTRY
from dcim.core.outbox import Item, ItemQueue
from dcim.core.samples import Batch, DeviceStatus, Sample
from dcim.core.topology import Topology

log = structlog.get_logger(__name__)

PUBLISHED = REGISTRY.counter("dcim_mqtt_published_total", "Messages acknowledged by the broker")
CONNECTED = REGISTRY.gauge("dcim_mqtt_connected", "1 while connected to the broker", ("role",))
REFUSED = REGISTRY.counter("dcim_mqtt_refused_total", "Messages the broker refused for good (MQTT 5 PUBACK "
                           "reason code), dropped", ("reason",))
# PUBACK reason codes that sending again cannot change (not authorised by the broker's ACL, a topic name or
# payload it will never take): such a message is counted and dropped, or it would block the queue for ever.
# Any other failure code (unspecified, implementation specific, quota exceeded, packet id in use) fails the
# batch, which is sent again on the next connection, after the backoff.
# A message bigger than the broker's Maximum Packet Size (MQTT 5 CONNACK) is not sent at all (the broker would
# disconnect the publisher for it, and again on every attempt): it counts as refused for good, under the
# reason code the standard has for it.
REFUSED_FOR_GOOD = {0x87: "not authorized", 0x90: "topic name invalid", 0x99: "payload format invalid",
                    PACKET_TOO_LARGE: "packet too large"}

PRIORITY_EVENT = 0
PRIORITY_TELEMETRY = 1
SEND_BATCH = 500
# Seconds a batch may wait for its acknowledgements on a live connection before it counts as a broker fault.
PUBLISH_TIMEOUT = 10.0


class _Window:
    """The messages of a batch on the wire, unacknowledged: the client calls `puback()` once per PUBACK;
    `below(n)` is a future done once at most `n` are left, or failed with the client's error once the
    connection is lost (`lost()`).

    How many may be on the wire (mqtt.max_inflight, lowered by an MQTT 5 broker's Receive Maximum) is kept
    by `_send` with this; the client sends what it is given.
    """

    __slots__ = ("_error", "_limit", "_waiter", "outstanding", "refused")

    def __init__(self) -> None:
        self.outstanding = 0
        self.refused: dict[int, int] = {}  # message id -> the failure reason code of its PUBACK (MQTT 5)
        self._limit = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: MqttError | None = None

    def puback(self, pid: int, code: int) -> None:
        if code >= 0x80:
            self.refused[pid] = code
        self.outstanding -= 1
        waiter = self._waiter
        if waiter is not None and self.outstanding <= self._limit:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def lost(self, error: MqttError) -> None:
        self._error = error
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def below(self, limit: int) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.outstanding <= limit:
            waiter.set_result(None)
        elif self._error is not None:
            waiter.set_exception(self._error)
        else:
            self._limit, self._waiter = limit, waiter
        return waiter


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    context = ssl.create_default_context(cafile=config.tls.ca_file)
    if config.tls.cert_file:
        context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    if config.tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def client_id(config: MqttConfig, role: str, instance: str | None = None) -> str:
    """The configured id, else `dcim-<role>-<instance>`: `instance` tells daemons on one host apart
    (dcim.app.instance.instance_tag: host name and a hash of the state_dir), since two clients with one id
    knock each other off the broker."""
    return config.client_id or f"dcim-{role}-{instance or socket.gethostname()}"


def status_batch(status: DeviceStatus) -> Batch:
    """A device's status change as a `device_status` batch (stored like any reading: online, error)."""
    return Batch(status.device, "device_status", status.ts_ns, [
        Sample(status.device, "online", status.online, status.ts_ns, tags=(("kind", status.kind),)),
        Sample(status.device, "error", status.error, status.ts_ns, tags=(("kind", status.kind),)),
    ])


def batch_json(batch: Batch, tags: tuple[tuple[str, str], ...]) -> bytes:
    return json.dumps({
        "device": batch.device,
        "kind": batch.kind,
        "ts": batch.ts_ns,
        "tags": dict(tags),
        "samples": [
            {"point": s.point, "value": s.value, "quality": s.quality.value, "reason": s.reason or None,
             "measurement": s.measurement or batch.kind, "tags": dict(s.tags)}
            for s in batch.samples
        ],
    }, separators=(",", ":")).encode()


class MqttPublisher:
    def __init__(self, config: MqttConfig, topology: Topology, outbox: ItemQueue,
                 *, gate: asyncio.Event | None = None, instance: str | None = None) -> None:
        if config.host is None:
            raise ValueError("mqtt.host is not set")
        self.config = config
        self.topology = topology
        self.outbox = outbox
        self.base = f"{config.prefix}/{topology.site}"
        self.client_id = client_id(config, "publisher", instance)
        self.presence_topic = f"{self.base}/daemon/{self.client_id}"
        self.connected = asyncio.Event()
        self.window = config.max_inflight  # of the current connection: see `_client`
        self._refusals: dict[str, int] = {}  # messages refused for good since start, per reason
        self._drained = asyncio.Event()
        # Set while the in-process ingest is subscribed: after a broker restart that lost every session,
        # what the outbox sends before the ingest is back would reach no subscriber.
        self._gate = gate
        # Consumers of the same journal that take each reading too (the in-process ingest, ingest.source:
        # local): one row on disk serves them all, the very bytes published.
        self.share: tuple[str, ...] = ()

    # ---- sink side: never blocks ------------------------------------------------------------------

    def on_batch(self, batch: Batch) -> None:
        tags = self.topology.tags(batch.device)
        if self.config.payload == "json":
            payload = batch_json(batch, tags)
        else:
            lines = encode_batch(batch, tags)
            if not lines:
                return
            payload = "\n".join(lines).encode()
        priority = PRIORITY_EVENT if batch.kind == "alarm" else PRIORITY_TELEMETRY
        self.outbox.put(f"{self.base}/{batch.kind}/{batch.device}", payload, priority, also=self.share)

    def on_status(self, status: DeviceStatus) -> None:
        payload = json.dumps({
            "device": status.device, "kind": status.kind, "online": status.online,
            "error": status.error or None, "ts": status.ts_ns,
        }).encode()
        self.outbox.put(f"{self.base}/status/{status.device}", payload, PRIORITY_EVENT, retain=True)
        # The same change as a `device_status` line, which the ingest stores like any other (the retained
        # JSON above it skips): dashboards show devices online / offline from the database.
        self.on_batch(status_batch(status))

    def alarm_changed(self, event: AlarmEvent) -> None:
        topic = f"{self.base}/alarms/{event.subject}/{event.rule}"
        if event.state is AlarmState.RESOLVED:
            # An empty retained message removes the retained alarm from the broker.
            self.outbox.put(topic, b"", PRIORITY_EVENT, retain=True)
            return
        if event.state is not AlarmState.FIRING:
            return
        payload = json.dumps({
            "key": event.key, "rule": event.rule, "subject": event.subject, "state": event.state.value,
            "severity": event.severity.value, "ts": event.ts_ns, "message": event.message,
            "metric": event.metric, "value": event.value, "threshold": event.threshold,
            "labels": event.labels, "acknowledged": event.acknowledged,
            # "", "shelved", "maintenance" or "inhibited by {alarm key}" (rules.inhibit)
            "suppressed": event.suppressed,
        }).encode()
        self.outbox.put(topic, payload, PRIORITY_EVENT, retain=True)

    # ---- sender ------------------------------------------------------------------------------------------

    def _client(self) -> MqttClient:
        password = self.config.password.get_secret_value() if self.config.password else None
        return MqttClient(
            self.config.host or "",
            self.config.port,
            client_id=self.client_id,
            protocol=PROTOCOL_5 if self.config.protocol == "5" else PROTOCOL_311,
            username=self.config.username,
            password=password,
            keepalive=self.config.keepalive,
            will=Will(self.presence_topic, b"offline", qos=1, retain=True),
            tls=tls_context(self.config),
            connect_timeout=10,
            on_connect=self._on_connect,
        )

    def _on_connect(self, client: MqttClient) -> None:
        # The broker's Receive Maximum (MQTT 5 CONNACK; 65,535 when it names none) bounds the window.
        self.window = min(self.config.max_inflight, client.receive_maximum)

    async def run(self) -> None:
        # The delay between attempts is capped by mqtt.reconnect_max and starts again from the shortest
        # once a connection succeeds: how soon delivery resumes after the broker returns is bounded by it.
        backoff = Backoff(maximum=self.config.reconnect_max)
        down_logged = False
        try:
            while True:
                try:
                    async with self._client() as client:
                        # A connect built on asyncio.wait_for may drop a cancellation that lands as the
                        # connection completes (gh-86296); ours uses asyncio.timeout, this stays as a guard.
                        reraise_lost_cancellation()
                        await client.publish(self.presence_topic, b"online", retain=True)
                        self.connected.set()
                        CONNECTED.set(1, role="publisher")
                        backoff.reset()
                        if down_logged:
                            log.info("broker reachable again", host=self.config.host, queued=self.outbox.depth)
                            down_logged = False
                        else:
                            log.info("connected to broker", host=self.config.host, port=self.config.port,
                                     in_flight=self.window)
                        try:
                            await self._send_loop(client)
                        except asyncio.CancelledError:
                            # Clean stop: say so, since the will is only for a connection that dies.
                            await asyncio.shield(self._say_offline(client))
                            raise
                except MqttError as err:
                    self.connected.clear()
                    CONNECTED.set(0, role="publisher")
                    if not down_logged:
                        log.warning("broker unavailable; buffering in the outbox",
                                    host=self.config.host, port=self.config.port, error=str(err))
                        down_logged = True
                    reraise_lost_cancellation()
                    await asyncio.sleep(backoff.next())
        finally:
            # Whatever ended the loop (a cancellation, or a bug that supervision restarts us after),
            # nothing is connected any more.
            self.connected.clear()
            CONNECTED.set(0, role="publisher")

    async def _say_offline(self, client: MqttClient) -> None:
        try:
            await client.publish(self.presence_topic, b"offline", retain=True, timeout=2)
        except MqttError:
            pass

    async def _send_loop(self, client: MqttClient) -> None:
        while True:
            if self._gate is not None:
                await self._gate.wait()
            if self.outbox.depth == 0:
                self._drained.set()
            items = await self.outbox.take(SEND_BATCH)
            self._drained.clear()
            await self._send(client, items)
            await self.outbox.ack(items)
            PUBLISHED.inc(len(items))

    async def _send(self, client: MqttClient, items: list[Item]) -> None:
        """Publish a batch at QoS 1 and return once the broker has acknowledged every message of it.

        At most `window` messages are on the wire (a sliding window): a pass encodes as many as the window
        has room for and writes them in one write, then one future waits for the next acknowledgement,
        after which the next pass tops the window up with as many as were acknowledged meanwhile (the last
        waits for every acknowledgement). The client hands each PUBACK to the window (`_Window.puback`) and
        a lost connection too (`_Window.lost`), which ends the wait at once, not after the timeout; nothing
        is acknowledged in the outbox then, and the whole batch is sent again on the next connection. So is
        a batch of which the broker refused a message for a reason that may pass (an MQTT 5 PUBACK with a
        failure code, quota exceeded say); a message refused for good (`REFUSED_FOR_GOOD`, which includes a
        message over the broker's Maximum Packet Size: never sent) is counted, logged and dropped.
        """
        if not items:
            return
        limit = max(1, self.window)
        window = _Window()
        mids: dict[int, Item] = {}
        unsent: list[tuple[Item, int]] = []  # refused before sending: (item, reason code)
        put = client.put
        sent, total = 0, len(items)
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                while True:
                    if client.paused:  # the transport's buffer is full: wait until it drains
                        await client.writable()
                    batch = items[sent:sent + limit - window.outstanding]
                    sent += len(batch)
                    for item in batch:
                        mid = put(item.key, item.payload, item.retain, window)
                        if mid > 0:
                            mids[mid] = item
                            window.outstanding += 1
                        else:
                            unsent.append((item, -mid))
                    client.flush()
                    last = sent >= total
                    await window.below(0 if last else limit - 1)
                    if last:
                        break
        except TimeoutError:
            raise MqttError(f"no acknowledgement within {PUBLISH_TIMEOUT:g} s") from None
        if window.refused or unsent:
            self._refused([*((mids[mid], code) for mid, code in window.refused.items()), *unsent])

    def _refused(self, refused: list[tuple[Item, int]]) -> None:
        """Messages of a batch the broker answered with a failure reason code, or that were too large for
        it: those refused for good are counted and logged (the first of each reason, then every 1,000th); any
        other refusal fails the batch (raises), to be sent again."""
        passing = {code for _, code in refused if code not in REFUSED_FOR_GOOD}
        if passing:
            codes = ", ".join(hex(c) for c in sorted({code for _, code in refused}))
            raise MqttError(f"the broker refused {len(refused)} message(s) (reason codes {codes}), "
                            "not all for good: sending the batch again")
        for item, code in refused:
            reason = REFUSED_FOR_GOOD[code]
            REFUSED.inc(reason=reason)
            self._refusals[reason] = count = self._refusals.get(reason, 0) + 1
            if count == 1 or count % 1000 == 0:
                log.error("the broker refused a message for good; dropped", reason=reason, code=hex(code),
                          topic=item.key, size=len(item.payload), refused_so_far=count)

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - a shutdown budget
        """Wait until the outbox is empty (True) or the timeout passes (False). Used at shutdown."""
        await self.outbox.flush()
        if self.outbox.depth == 0:
            return True
        try:
            async with asyncio.timeout(timeout):
                while self.outbox.depth:
                    self._drained.clear()
                    await self._drained.wait()
        except TimeoutError:
            return False
        return True
