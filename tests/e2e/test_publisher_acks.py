"""The publisher acknowledges outbox items only once the broker has acknowledged them, keeps to the broker's
receive window, and tells a refusal from an acknowledgement.

The brokers here are small MQTT servers written in the test, since the faults they play cannot be asked of
mosquitto: one that hangs up and falls silent with publishes unacknowledged (3.1.1), one that disconnects a
client exceeding its Receive Maximum (5), and one whose PUBACKs carry failure reason codes (5).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dcim.app import publisher as publisher_module
from dcim.app.config import Config
from dcim.app.publisher import MqttPublisher
from dcim.core.journal import Outbox
from dcim.core.topology import Topology
from tests.helpers import wait_until

MESSAGES = 40


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


class Broker:
    """A broker written in the test: `start` gives its port. Each connection is read packet by packet;
    CONNECT is answered with `connack`, each QoS 1 PUBLISH handed to `published` (which answers it, or not,
    and returns False to hang up), PINGREQ answered, DISCONNECT ends it."""

    CONNACK = b"\x20\x02\x00\x00"  # 3.1.1: accepted

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await self.server.wait_closed()

    def connected(self, writer: asyncio.StreamWriter) -> None:
        """A new connection (its number is `self.connections`)."""

    def published(self, topic: str, mid: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"\x40\x02" + mid)
        return True

    def closed(self) -> None:
        """The connection ended."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.connected(writer)
        try:
            while True:
                kind, body = await read_packet(reader)
                packet = kind >> 4
                if packet == 1:  # CONNECT
                    writer.write(self.CONNACK)
                elif packet == 3:  # PUBLISH, QoS 1 (the publisher sends nothing else)
                    size = int.from_bytes(body[:2], "big")
                    if not self.published(body[2:2 + size].decode(), body[2 + size:4 + size], writer):
                        break
                elif packet == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif packet == 14:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed()
            writer.close()


async def publish_through(broker: Broker, tmp_path: Path, topics: list[str], *,
                          done: Callable[[], bool] | None = None,
                          **mqtt: Any) -> MqttPublisher:
    """Put `topics` in an outbox, run a publisher to `broker` until the outbox is empty (and `done()`), stop
    it and the broker; the publisher, for what it counted."""
    port = await broker.start()
    config = Config.model_validate({
        "site": {"id": "t"},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_max": "200ms", **mqtt},
        "state_dir": str(tmp_path / "state"),
    })
    box = Outbox(tmp_path / "outbox.sqlite", name="mqtt", max_items=10_000)
    await box.open()
    publisher = MqttPublisher(config.mqtt, Topology(config), box)
    for topic in topics:
        box.put(topic, b"cdu flow_lpm=1", 1)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(box.run()), tg.create_task(publisher.run())]
        try:
            await wait_until(lambda: box.depth == 0 and (done is None or done()), timeout=90,
                             message="the outbox emptied")
        finally:
            for task in tasks:
                task.cancel()
    await box.close()
    await broker.stop()
    return publisher


class FickleBroker(Broker):
    """Acknowledges per connection: 3 then hang up; 1 then silence (only the presence message); then
    everything. Whatever was not acknowledged must be sent again on the next connection: nothing is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[list[str]] = []  # topics per connection, in arrival order
        self.acked: set[str] = set()
        self.budget: int | None = None

    def connected(self, writer: asyncio.StreamWriter) -> None:
        self.received.append([])
        self.budget = {1: 3, 2: 1}.get(self.connections)

    def published(self, topic: str, mid: bytes, writer: asyncio.StreamWriter) -> bool:
        self.received[-1].append(topic)
        if self.budget is None or self.budget > 0:
            writer.write(b"\x40\x02" + mid)
            self.acked.add(topic)
            if self.budget is not None:
                self.budget -= 1
            return True
        return self.connections != 1  # the first hangs up with publishes unacknowledged


@pytest.mark.timeout(120)
async def test_unacknowledged_publishes_are_sent_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The silent second connection must end in a broker fault soon, not after the production 10 s.
    monkeypatch.setattr(publisher_module, "PUBLISH_TIMEOUT", 1.0)
    broker = FickleBroker()
    topics = [f"dcim/t/cdu/cdu-{i}" for i in range(MESSAGES)]
    await publish_through(broker, tmp_path, topics, done=lambda: broker.connections >= 3, protocol="3.1.1")

    # First connection: the presence message and two readings acknowledged, then the hang-up.
    first, second, third = broker.received[:3]
    assert len(first) > 3
    # Second: only the presence acknowledged; the batch timed out and was not acknowledged in the outbox.
    assert [t for t in second if t in topics], "the second connection got the unacknowledged batch again"
    # Third: the whole batch again (the outbox acknowledges a batch only once all of it is acknowledged), so
    # nothing is missing at the broker; the readings acknowledged on the first connection come twice (QoS 1).
    assert set(topics) <= set(third)
    assert set(topics) <= broker.acked


class StrictBroker(Broker):
    """An MQTT 5 broker that announces a Receive Maximum of 3 and holds its PUBACKs back a little, so that a
    client sending more than 3 unacknowledged messages is caught: it answers, as the standard lets it,
    DISCONNECT with reason 0x93 (Receive Maximum exceeded) and hangs up."""

    RECEIVE_MAXIMUM = 3
    CONNACK = b"\x20\x06\x00\x00\x03\x21" + RECEIVE_MAXIMUM.to_bytes(2, "big")  # property 0x21

    def __init__(self) -> None:
        super().__init__()
        self.received: list[str] = []
        self.most_in_flight = 0
        self.violations = 0
        self.unacked: list[bytes] = []
        self.acking: asyncio.Task[None] | None = None

    def connected(self, writer: asyncio.StreamWriter) -> None:
        self.unacked = unacked = []

        async def acknowledge() -> None:
            while True:
                await asyncio.sleep(0.005)
                while unacked:
                    writer.write(b"\x40\x02" + unacked.pop(0))

        self.acking = asyncio.create_task(acknowledge())

    def published(self, topic: str, mid: bytes, writer: asyncio.StreamWriter) -> bool:
        self.received.append(topic)
        self.unacked.append(mid)
        self.most_in_flight = max(self.most_in_flight, len(self.unacked))
        if len(self.unacked) > self.RECEIVE_MAXIMUM:
            self.violations += 1
            writer.write(b"\xe0\x02\x93\x00")  # DISCONNECT, Receive Maximum exceeded
            return False
        return True

    def closed(self) -> None:
        if self.acking is not None:
            self.acking.cancel()


@pytest.mark.timeout(120)
async def test_the_broker_receive_maximum_is_never_exceeded(tmp_path: Path) -> None:
    """mqtt.max_inflight is 1000 by default; an MQTT 5 broker that announces less gets no more than that."""
    broker = StrictBroker()
    topics = [f"dcim/t/cdu/cdu-{i}" for i in range(MESSAGES * 5)]
    publisher = await publish_through(broker, tmp_path, topics)
    assert publisher.config.protocol == "5" and publisher.config.max_inflight > StrictBroker.RECEIVE_MAXIMUM
    seen = (f"{broker.connections} connection(s), {broker.violations} violation(s), at most "
            f"{broker.most_in_flight} in flight, {len(broker.received)} PUBLISH received")
    assert broker.violations == 0 and broker.most_in_flight <= StrictBroker.RECEIVE_MAXIMUM, seen
    assert publisher.window == StrictBroker.RECEIVE_MAXIMUM, seen
    assert [t for t in broker.received if t in topics] == topics, seen  # in order, each once: nothing sent again


class RefusingBroker(Broker):
    """An MQTT 5 broker whose PUBACKs carry failure reason codes: 0x87 (not authorised) for every topic that
    ends in "-denied", 0x97 (quota exceeded) the first time it sees "cdu-quota"; success for the rest."""

    CONNACK = b"\x20\x03\x00\x00\x00"  # 5: accepted, no properties

    def __init__(self) -> None:
        super().__init__()
        self.received: list[str] = []
        self.accepted: set[str] = set()

    def published(self, topic: str, mid: bytes, writer: asyncio.StreamWriter) -> bool:
        code = 0x00
        if topic.endswith("-denied"):
            code = 0x87
        elif topic.endswith("cdu-quota") and topic not in self.received:
            code = 0x97
        self.received.append(topic)
        if code == 0:
            self.accepted.add(topic)
        writer.write(b"\x40\x03" + mid + bytes([code]))
        return True


@pytest.mark.timeout(120)
async def test_a_message_refused_for_good_is_counted_and_dropped_a_passing_refusal_is_sent_again(
        tmp_path: Path) -> None:
    broker = RefusingBroker()
    good = [f"dcim/t/cdu/cdu-{i}" for i in range(20)] + ["dcim/t/cdu/cdu-quota"]
    denied = [f"dcim/t/cdu/cdu-{i}-denied" for i in range(3)]
    refused_before = publisher_module.REFUSED.get(reason="not authorized")
    await publish_through(broker, tmp_path, [*good, *denied])
    seen = f"{broker.connections} connection(s); received {broker.received}"
    assert set(good) <= broker.accepted, seen  # the quota refusal passed: sent again, taken
    assert broker.received.count("dcim/t/cdu/cdu-quota") >= 2, seen
    assert publisher_module.REFUSED.get(reason="not authorized") - refused_before == 3, seen
    assert broker.connections >= 2, seen  # the passing refusal failed the batch: a new connection sent it
