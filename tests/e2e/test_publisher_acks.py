"""The publisher acknowledges outbox items only once the broker has acknowledged them.

The broker here is a small MQTT 3.1.1 server written in the test, since the faults it plays cannot be asked
of mosquitto: on its first connection it acknowledges three PUBLISH packets and then closes the socket; on
its second it acknowledges the presence message and then nothing more; on the third it acknowledges
everything. Whatever was not acknowledged must be sent again on the next connection, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

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


class FickleBroker:
    """Acknowledges per connection: 3 then hang up; 1 then silence; then everything."""

    def __init__(self) -> None:
        self.connections = 0
        self.received: list[list[str]] = []  # topics per connection, in arrival order
        self.acked: set[str] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        topics: list[str] = []
        self.received.append(topics)
        budget = {1: 3, 2: 1}.get(number)
        try:
            while True:
                kind, body = await read_packet(reader)
                packet = kind >> 4
                if packet == 1:  # CONNECT
                    writer.write(b"\x20\x02\x00\x00")
                elif packet == 3:  # PUBLISH, QoS 1 (the publisher sends nothing else)
                    size = int.from_bytes(body[:2], "big")
                    topic = body[2:2 + size].decode()
                    mid = body[2 + size:4 + size]
                    topics.append(topic)
                    if budget is None or budget > 0:
                        writer.write(b"\x40\x02" + mid)
                        self.acked.add(topic)
                        if budget is not None:
                            budget -= 1
                    elif number == 1:
                        break  # hang up with publishes unacknowledged
                elif packet == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif packet == 14:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.timeout(120)
async def test_unacknowledged_publishes_are_sent_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The silent second connection must end in a broker fault soon, not after the production 10 s.
    monkeypatch.setattr(publisher_module, "PUBLISH_TIMEOUT", 1.0)
    broker = FickleBroker()
    port = await broker.start()
    config = Config.model_validate({
        "site": {"id": "t"},
        "mqtt": {"host": "127.0.0.1", "port": port, "protocol": "3.1.1", "reconnect_max": "200ms"},
        "state_dir": str(tmp_path / "state"),
    })
    box = Outbox(tmp_path / "outbox.sqlite", name="mqtt", max_items=10_000)
    await box.open()
    publisher = MqttPublisher(config.mqtt, Topology(config), box)
    topics = [f"dcim/t/cdu/cdu-{i}" for i in range(MESSAGES)]
    for topic in topics:
        box.put(topic, b"cdu flow_lpm=1", 1)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(box.run()), tg.create_task(publisher.run())]
        try:
            await wait_until(lambda: box.depth == 0 and broker.connections >= 3, timeout=90,
                             message="the outbox emptied through a third connection")
        finally:
            for task in tasks:
                task.cancel()
    await box.close()
    assert broker.server is not None
    broker.server.close()
    with contextlib.suppress(Exception):
        await broker.server.wait_closed()

    # First connection: the presence message and two readings acknowledged, then the hang-up.
    first, second, third = broker.received[:3]
    assert len(first) > 3
    # Second: only the presence acknowledged; the batch timed out and was not acknowledged in the outbox.
    assert [t for t in second if t in topics], "the second connection got the unacknowledged batch again"
    # Third: the whole batch again (the outbox acknowledges a batch only once all of it is acknowledged), so
    # nothing is missing at the broker; the readings acknowledged on the first connection come twice (QoS 1).
    assert set(topics) <= set(third)
    assert set(topics) <= broker.acked


class StrictBroker:
    """An MQTT 5 broker that announces a Receive Maximum of 3 and holds its PUBACKs back a little, so that a
    client sending more than 3 unacknowledged messages is caught: it answers, as the standard lets it,
    DISCONNECT with reason 0x93 (Receive Maximum exceeded) and hangs up."""

    RECEIVE_MAXIMUM = 3

    def __init__(self) -> None:
        self.received: list[str] = []
        self.connections = 0
        self.most_in_flight = 0
        self.violations = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unacked: list[bytes] = []
        self.connections += 1

        async def acknowledge() -> None:
            while True:
                await asyncio.sleep(0.005)
                while unacked:
                    writer.write(b"\x40\x02" + unacked.pop(0))

        acking = asyncio.create_task(acknowledge())
        try:
            while True:
                kind, body = await read_packet(reader)
                packet = kind >> 4
                if packet == 1:  # CONNECT: CONNACK with the property Receive Maximum (0x21)
                    writer.write(b"\x20\x06\x00\x00\x03\x21" + self.RECEIVE_MAXIMUM.to_bytes(2, "big"))
                elif packet == 3:  # PUBLISH, QoS 1
                    size = int.from_bytes(body[:2], "big")
                    self.received.append(body[2:2 + size].decode())
                    unacked.append(body[2 + size:4 + size])
                    self.most_in_flight = max(self.most_in_flight, len(unacked))
                    if len(unacked) > self.RECEIVE_MAXIMUM:
                        self.violations += 1
                        writer.write(b"\xe0\x02\x93\x00")  # DISCONNECT, Receive Maximum exceeded
                        break
                elif packet == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif packet == 14:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            acking.cancel()
            writer.close()


@pytest.mark.timeout(120)
async def test_the_broker_receive_maximum_is_never_exceeded(tmp_path: Path) -> None:
    """mqtt.max_inflight is 100 by default; an MQTT 5 broker that announces less gets no more than that."""
    broker = StrictBroker()
    port = await broker.start()
    config = Config.model_validate({
        "site": {"id": "t"},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_max": "200ms"},
        "state_dir": str(tmp_path / "state"),
    })
    assert config.mqtt.protocol == "5" and config.mqtt.max_inflight > StrictBroker.RECEIVE_MAXIMUM
    box = Outbox(tmp_path / "outbox.sqlite", name="mqtt", max_items=10_000)
    await box.open()
    publisher = MqttPublisher(config.mqtt, Topology(config), box)
    topics = [f"dcim/t/cdu/cdu-{i}" for i in range(MESSAGES * 5)]
    for topic in topics:
        box.put(topic, b"cdu flow_lpm=1", 1)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(box.run()), tg.create_task(publisher.run())]
        try:
            await wait_until(lambda: box.depth == 0, timeout=90, message="the outbox emptied")
        finally:
            for task in tasks:
                task.cancel()
    await box.close()
    assert broker.server is not None
    broker.server.close()
    with contextlib.suppress(Exception):
        await broker.server.wait_closed()
    seen = (f"{broker.connections} connection(s), {broker.violations} violation(s), at most "
            f"{broker.most_in_flight} in flight, {len(broker.received)} PUBLISH received")
    assert broker.violations == 0 and broker.most_in_flight <= StrictBroker.RECEIVE_MAXIMUM, seen
    assert publisher.window == StrictBroker.RECEIVE_MAXIMUM, seen
    assert [t for t in broker.received if t in topics] == topics, seen  # in order, each once: nothing sent again


class RefusingBroker:
    """An MQTT 5 broker whose PUBACKs carry failure reason codes: 0x87 (not authorised) for every topic that
    ends in "-denied", 0x97 (quota exceeded) the first time it sees "cdu-quota"; success for the rest."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.accepted: set[str] = set()
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                kind, body = await read_packet(reader)
                packet = kind >> 4
                if packet == 1:  # CONNECT
                    writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK, no properties
                elif packet == 3:  # PUBLISH, QoS 1
                    size = int.from_bytes(body[:2], "big")
                    topic = body[2:2 + size].decode()
                    mid = body[2 + size:4 + size]
                    code = 0x00
                    if topic.endswith("-denied"):
                        code = 0x87
                    elif topic.endswith("cdu-quota") and topic not in self.received:
                        code = 0x97
                    self.received.append(topic)
                    if code == 0:
                        self.accepted.add(topic)
                    writer.write(b"\x40\x03" + mid + bytes([code]))
                elif packet == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif packet == 14:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.timeout(120)
async def test_a_message_refused_for_good_is_counted_and_dropped_a_passing_refusal_is_sent_again(
        tmp_path: Path) -> None:
    broker = RefusingBroker()
    port = await broker.start()
    config = Config.model_validate({
        "site": {"id": "t"},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_max": "200ms"},
        "state_dir": str(tmp_path / "state"),
    })
    box = Outbox(tmp_path / "outbox.sqlite", name="mqtt", max_items=10_000)
    await box.open()
    publisher = MqttPublisher(config.mqtt, Topology(config), box)
    good = [f"dcim/t/cdu/cdu-{i}" for i in range(20)] + ["dcim/t/cdu/cdu-quota"]
    denied = [f"dcim/t/cdu/cdu-{i}-denied" for i in range(3)]
    for topic in [*good, *denied]:
        box.put(topic, b"cdu flow_lpm=1", 1)
    refused_before = publisher_module.REFUSED.get(reason="not authorized")
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(box.run()), tg.create_task(publisher.run())]
        try:
            await wait_until(lambda: box.depth == 0, timeout=90, message="the outbox emptied")
        finally:
            for task in tasks:
                task.cancel()
    await box.close()
    assert broker.server is not None
    broker.server.close()
    with contextlib.suppress(Exception):
        await broker.server.wait_closed()
    seen = f"{broker.connections} connection(s); received {broker.received}"
    assert set(good) <= broker.accepted, seen  # the quota refusal passed: sent again, taken
    assert broker.received.count("dcim/t/cdu/cdu-quota") >= 2, seen
    assert publisher_module.REFUSED.get(reason="not authorized") - refused_before == 3, seen
    assert broker.connections >= 2, seen  # the passing refusal failed the batch: a new connection sent it
