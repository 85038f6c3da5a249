"""The publisher's own MQTT client (dcim.app.mqttwire) against a real mosquitto (MQTT 3.1.1 and 5, plain, TLS
and with a password file) and against hostile brokers written in the test.

Against mosquitto: what is put is delivered, in order, retained where asked, every PUBACK counted; the will
is published when the connection dies and not on a clean stop; a wrong password or an untrusted certificate
is a refusal (`MqttError`), not a hang. Against the hostile brokers (small asyncio servers): a refusing
CONNACK, garbage instead of a CONNACK, a packet cut short by EOF, a remaining length of five bytes, a length
over the client's bound, an unsolicited PUBLISH, a broker that stops answering PINGREQ, a server DISCONNECT
with a reason code: each ends in `MqttError` saying what happened, with the messages in flight `lost` to
their `Acks`; a PUBACK for an id never sent (or twice) is ignored; a message over the broker's Maximum Packet
Size is never sent. Through the publisher: a broker that plays these faults one connection after another
loses nothing of the journal, and a message over the Maximum Packet Size is counted as refused and dropped.

The `asyncio.timeout`s here only stop a test that would hang; nothing is asserted about time.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from dcim.app import publisher as publisher_module
from dcim.app.config import MqttConfig, Tls
from dcim.app.mqttwire import (
    PACKET_TOO_LARGE,
    PROTOCOL_5,
    PROTOCOL_311,
    TOPIC_NAME_INVALID,
    MqttClient,
    MqttError,
    Will,
)
from dcim.app.publisher import tls_context
from tests.e2e.test_publisher_acks import Broker, publish_through, read_packet
from tests.helpers import require_binary
from tests.receivers import SelfSignedCert
from tests.servers import Mosquitto

GUARD = 30.0  # seconds: only a bound for a test that would otherwise hang
PROTOCOLS = [pytest.param(PROTOCOL_311, id="3.1.1"), pytest.param(PROTOCOL_5, id="5")]


class Collected:
    """An `Acks` that records what it is told."""

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.errors: list[MqttError] = []
        self.changed = asyncio.Event()

    def puback(self, pid: int, code: int) -> None:
        assert pid not in self.codes, f"packet id {pid} acknowledged twice"
        self.codes[pid] = code
        self.changed.set()

    def lost(self, error: MqttError) -> None:
        self.errors.append(error)
        self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(GUARD):
            while not done():
                self.changed.clear()
                await self.changed.wait()


def client_for(port: int, protocol: int = PROTOCOL_5, **kwargs: Any) -> MqttClient:
    kwargs.setdefault("client_id", "wire-test")
    return MqttClient("127.0.0.1", port, protocol=protocol, **kwargs)


async def next_message(subscriber: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(GUARD):
        return await anext(subscriber.messages)


# ---- a real broker --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_put_and_flush_deliver_every_message_in_order_and_count_each_puback(
        mosquitto: Mosquitto, protocol: int) -> None:
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="watcher") as watcher:
        await watcher.subscribe("wire/#", qos=1)
        acks = Collected()
        async with client_for(mosquitto.port, protocol) as client:
            # mosquitto's max_inflight_messages (tests/servers.py), told to MQTT 5 clients only.
            assert client.receive_maximum == (1000 if protocol == PROTOCOL_5 else 65535)
            pids = [client.put(f"wire/t/{i}", b"m%d" % i, False, acks) for i in range(60)]
            client.flush()
            assert len(set(pids)) == 60 and all(0 < p <= 65535 for p in pids)
            await acks.until(lambda: len(acks.codes) == 60)
            assert set(acks.codes) == set(pids) and set(acks.codes.values()) == {0}
            assert client.in_flight == 0
            assert await client.publish("wire/retained", b"kept", retain=True) == 0
        assert acks.errors == []  # nothing was in flight at the clean stop
        got = [await next_message(watcher) for _ in range(61)]
        assert [m.payload for m in got[:60]] == [b"m%d" % i for i in range(60)]
        assert str(got[60].topic) == "wire/retained"
    # The retained message is kept by the broker.
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="late") as late:
        await late.subscribe("wire/retained", qos=1)
        kept = await next_message(late)
        assert kept.retain and kept.payload == b"kept"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_will_is_published_when_the_connection_dies_not_on_a_clean_stop(
        mosquitto: Mosquitto, protocol: int) -> None:
    will = Will("wire/presence", b"offline", qos=1, retain=True)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="watcher") as watcher:
        await watcher.subscribe("wire/#", qos=1)
        async with client_for(mosquitto.port, protocol, will=will, client_id="clean") as client:
            await client.publish("wire/presence", b"online", retain=True)
        # A clean stop sends DISCONNECT: no will. The next message seen is the marker, not "offline".
        async with client_for(mosquitto.port, protocol, client_id="marker") as marker:
            await marker.publish("wire/marker", b"after the clean stop")
        assert (await next_message(watcher)).payload == b"online"
        assert (await next_message(watcher)).payload == b"after the clean stop"
        # A connection that dies (no DISCONNECT): the broker publishes the will.
        client = client_for(mosquitto.port, protocol, will=will, client_id="dying")
        await client.connect()
        assert client._transport is not None
        client._transport.abort()
        dead = await next_message(watcher)
        assert (str(dead.topic), dead.payload) == ("wire/presence", b"offline")
        with pytest.raises(MqttError):
            client.put("wire/t", b"x", False, Collected())


class SecuredMosquitto(Mosquitto):
    """mosquitto with TLS on its one listener (a self-signed certificate) and a password file."""

    def __init__(self, workdir: Path, *, cert: SelfSignedCert, passwords: dict[str, str], **kwargs: Any) -> None:
        super().__init__(workdir, extra_config=[
            f"certfile {cert.certfile}", f"keyfile {cert.keyfile}",
            "allow_anonymous false", f"password_file {workdir / 'passwd'}",
        ], **kwargs)
        self.passwords = passwords

    def _prepare(self) -> None:
        super()._prepare()
        passwd = self.workdir / "passwd"
        passwd.unlink(missing_ok=True)
        for user, password in self.passwords.items():
            create = [] if passwd.exists() else ["-c"]
            subprocess.run(["mosquitto_passwd", *create, "-b", str(passwd), user, password], check=True,
                           capture_output=True, timeout=30)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_tls_and_a_password(server_factory: Callable[..., Any], tmp_path: Path, protocol: int) -> None:
    require_binary("mosquitto_passwd", "mosquitto")
    cert = SelfSignedCert.create(tmp_path)
    broker = server_factory(SecuredMosquitto, cert=cert, passwords={"dcim": "pw-dcim"})
    # TLS as the daemon sets it up from mqtt.tls.ca_file.
    trusted = tls_context(MqttConfig(tls=Tls(ca_file=str(cert.certfile))))
    async with client_for(broker.port, protocol, tls=trusted, username="dcim", password="pw-dcim") as client:
        # Success: 0, or (MQTT 5) 0x10, no matching subscribers.
        assert await client.publish("wire/secure", b"over TLS") in (0x00, 0x10)
    with pytest.raises(MqttError) as refused:
        async with client_for(broker.port, protocol, tls=trusted, username="dcim", password="wrong"):
            pass
    assert "refused" in str(refused.value) and refused.value.code in (4, 5, 0x86, 0x87), refused.value
    # The system's trust store does not know the self-signed certificate.
    with pytest.raises(MqttError, match="certificate"):
        async with client_for(broker.port, protocol, tls=tls_context(MqttConfig(tls=Tls())),
                              username="dcim", password="pw-dcim"):
            pass


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_connect_packet_carries_clean_start_will_credentials_and_keepalive(protocol: int) -> None:
    """What the publisher asks of the broker, byte by byte: as paho sent it for a new client."""
    connects: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kind, body = await read_packet(reader)
        connects.append(bytes([kind]) + body)
        writer.write(CONNACK_5 if protocol == PROTOCOL_5 else CONNACK_311)
        await until_eof(reader)

    async with hostile(script) as port:
        async with client_for(port, protocol, client_id="dcim-publisher-x", username="dcim", password="pw",
                              keepalive=30, will=Will("dcim/t/daemon/x", b"offline", qos=1, retain=True)):
            pass
    v5 = protocol == PROTOCOL_5
    # clean session / clean start 0x02, will 0x04, will QoS 1 0x08, will retain 0x20, password 0x40, user 0x80
    expected = (b"\x10" + b"\x00\x04MQTT" + bytes([protocol, 0xEE]) + b"\x00\x1e" + (b"\x00" if v5 else b"")
                + b"\x00\x10dcim-publisher-x" + (b"\x00" if v5 else b"") + b"\x00\x0fdcim/t/daemon/x"
                + b"\x00\x07offline" + b"\x00\x04dcim" + b"\x00\x02pw")
    assert connects == [expected]


async def test_packet_ids_wrap_and_skip_ids_still_in_flight() -> None:
    """Ids run 1..65535 and wrap to 1; an id whose message is unacknowledged is never handed out again."""
    async with hostile(answering(CONNACK_5)) as port:  # acknowledges nothing
        async with client_for(port) as client:
            acks = Collected()
            first = [client.put("wire/t", b"x", False, acks) for _ in range(3)]
            client._next_pid = 65533
            later = [client.put("wire/t", b"x", False, acks) for _ in range(4)]
            client.flush()
    assert first == [1, 2, 3] and later == [65534, 65535, 4, 5]


async def test_a_broker_that_is_not_there_is_an_mqtt_error(free_port: int) -> None:
    with pytest.raises(MqttError, match=r"127\.0\.0\.1"):
        async with client_for(free_port):
            pass


# ---- hostile brokers written in the test ----------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def hostile(script: Script) -> AsyncIterator[int]:
    """A broker that plays `script` on each connection; its port. Connections are closed on the way out."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(GUARD):
                await server.wait_closed()


CONNACK_311 = b"\x20\x02\x00\x00"
CONNACK_5 = b"\x20\x03\x00\x00\x00"


async def until_eof(reader: asyncio.StreamReader) -> None:
    """Read whatever comes until the client hangs up."""
    while await reader.read(4096):
        pass


def answering(connack: bytes, after_publish: bytes | None = None, *, ack: bool = False) -> Script:
    """CONNACK with `connack`; then on the first PUBLISH write `after_publish` (if ack, PUBACK each PUBLISH
    first) and end its side of the connection (EOF); read until the client hangs up. PINGREQ is not
    answered."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)  # CONNECT
        writer.write(connack)
        sent = False
        while True:
            kind, body = await read_packet(reader)
            if kind >> 4 == 3:
                size = int.from_bytes(body[:2], "big")
                if ack:
                    writer.write(b"\x40\x02" + body[2 + size:4 + size])
                if after_publish is not None and not sent:
                    writer.write(after_publish)
                    await writer.drain()
                    writer.write_eof()
                    sent = True
                    await until_eof(reader)
                    return
            await writer.drain()

    return script


async def expect_error(port: int, protocol: int = PROTOCOL_5, *, publish: int = 1,
                       **kwargs: Any) -> tuple[MqttError, Collected]:
    """Connect, put `publish` messages, and wait for the connection to end: its error, and the Acks."""
    acks = Collected()
    client = client_for(port, protocol, **kwargs)
    try:
        await client.connect()
        for i in range(publish):
            assert client.put(f"wire/t/{i}", b"x", False, acks) > 0
        client.flush()
        await acks.until(lambda: bool(acks.errors))
        with pytest.raises(MqttError) as after:  # and the client says so to anyone who tries
            client.put("wire/t/late", b"x", False, acks)
        assert str(acks.errors[0]) in str(after.value)
        return acks.errors[0], acks
    finally:
        await client.disconnect()


@pytest.mark.parametrize(("protocol", "connack", "code", "words"), [
    pytest.param(PROTOCOL_311, b"\x20\x02\x00\x05", 5, "not authorized", id="3.1.1-not-authorized"),
    pytest.param(PROTOCOL_311, b"\x20\x02\x00\x02", 2, "client identifier rejected", id="3.1.1-id-rejected"),
    pytest.param(PROTOCOL_5, b"\x20\x0a\x00\x86\x07\x1f\x00\x04nope", 0x86, "bad user name or password (nope)",
                 id="5-bad-password-with-reason-string"),
    pytest.param(PROTOCOL_5, b"\x20\x03\x00\x9f\x00", 0x9F, "connection rate exceeded", id="5-rate"),
])
async def test_a_refusing_connack_is_an_mqtt_error_naming_the_reason(
        protocol: int, connack: bytes, code: int, words: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(connack)
        await until_eof(reader)

    async with hostile(script) as port:
        with pytest.raises(MqttError) as refused:
            async with asyncio.timeout(GUARD):
                await client_for(port, protocol).connect()
    assert refused.value.code == code and words in str(refused.value) and "refused" in str(refused.value)


@pytest.mark.parametrize(("reply", "words"), [
    pytest.param(b"HTTP/1.1 400 Bad Request\r\n\r\n", "unexpected packet", id="http"),
    pytest.param(b"\x20\x02\x00", "in the middle of a packet", id="connack-cut-short"),
    pytest.param(b"\x30\x05\x00\x01ab\x00", "PUBLISH", id="publish-instead"),
    pytest.param(b"\x20\x80\x80\x80\x80\x01", "more than 4 bytes", id="five-byte-length"),
    pytest.param(b"", "closed by the broker", id="eof"),
])
async def test_garbage_instead_of_a_connack_is_an_mqtt_error(reply: bytes, words: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(reply)
        await writer.drain()
        writer.write_eof()
        await until_eof(reader)

    async with hostile(script) as port:
        with pytest.raises(MqttError, match=words):
            async with asyncio.timeout(GUARD):
                await client_for(port).connect()


async def test_a_broker_that_never_sends_a_connack_is_an_mqtt_error_after_the_connect_timeout() -> None:
    async with hostile(lambda reader, writer: until_eof(reader)) as port:
        with pytest.raises(MqttError, match="not connected within"):
            async with asyncio.timeout(GUARD):
                await client_for(port, connect_timeout=0.5).connect()


@pytest.mark.parametrize(("protocol", "after_publish", "words"), [
    pytest.param(PROTOCOL_5, b"\x40\x03\x00", "in the middle of a packet", id="truncated-then-eof"),
    pytest.param(PROTOCOL_5, b"\x40\xff\xff\xff\xff\x7f", "more than 4 bytes", id="five-byte-length"),
    pytest.param(PROTOCOL_5, b"\x40\xff\xff\xff\x7f", "malformed PUBACK", id="puback-of-256-mib"),
    pytest.param(PROTOCOL_5, b"\x20\xff\xff\x7f", "more than 1048576", id="two-mib-packet"),
    pytest.param(PROTOCOL_311, b"\x40\x03\x00\x01\x00", "malformed PUBACK", id="3.1.1-puback-of-3-bytes"),
    pytest.param(PROTOCOL_5, b"\x30\x05\x00\x01ab\x00", "subscribed to nothing", id="unsolicited-publish"),
    pytest.param(PROTOCOL_5, CONNACK_5, "second CONNACK", id="second-connack"),
    pytest.param(PROTOCOL_5, b"\x90\x03\x00\x01\x00", "unexpected packet", id="suback"),
    pytest.param(PROTOCOL_5, b"\xd0\x01\x00", "malformed PINGRESP", id="pingresp-with-a-body"),
    pytest.param(PROTOCOL_311, b"\xe0\x00", "unexpected packet", id="3.1.1-server-disconnect"),
    pytest.param(PROTOCOL_5, b"\xe0\x04\x8b\x02\x26\x00", "malformed", id="disconnect-with-cut-properties"),
    pytest.param(PROTOCOL_5, b"\xe0\x03\x8b\x01\x7f", "unknown property", id="disconnect-unknown-property"),
])
async def test_malformed_packets_after_the_connack_end_the_connection_with_an_mqtt_error(
        protocol: int, after_publish: bytes, words: str) -> None:
    connack = CONNACK_5 if protocol == PROTOCOL_5 else CONNACK_311
    async with hostile(answering(connack, after_publish)) as port:
        error, acks = await expect_error(port, protocol, publish=3)
    assert words in str(error), error
    assert acks.codes == {} and len(acks.errors) == 1  # told once, though three messages were in flight


@pytest.mark.parametrize(("disconnect", "code", "words"), [
    pytest.param(b"\xe0\x01\x8b", 0x8B, "server shutting down", id="shutting-down"),
    pytest.param(b"\xe0\x0d\x98\x0b\x1f\x00\x08go away!", 0x98, "administrative action (go away!)",
                 id="with-reason-string"),
    pytest.param(b"\xe0\x00", 0x00, "normal disconnection", id="no-reason-code"),
])
async def test_a_server_disconnect_ends_the_connection_with_its_reason(
        disconnect: bytes, code: int, words: str) -> None:
    async with hostile(answering(CONNACK_5, disconnect)) as port:
        error, _ = await expect_error(port)
    assert error.code == code and "the broker disconnected" in str(error) and words in str(error), error


async def test_a_broker_that_stops_answering_pingreq_counts_as_lost() -> None:
    """Accepts, then reads everything and answers nothing: the PINGREQ after a second idle goes unanswered,
    and a second later the connection counts as lost."""
    pinged = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(CONNACK_5)
        while True:
            kind, _ = await read_packet(reader)
            if kind == 0xC0:
                pinged.set()

    async with hostile(script) as port:
        client = client_for(port, keepalive=1)
        one = Collected()
        try:
            await client.connect()
            # Nothing is put until the ping is sent: then a message waits for a PUBACK that never comes.
            async with asyncio.timeout(GUARD):
                await pinged.wait()
            client.put("wire/t", b"x", False, one)
            client.flush()
            await one.until(lambda: bool(one.errors))
        finally:
            await client.disconnect()
    assert "no PINGRESP within 1 s" in str(one.errors[0])


async def test_pingreq_is_answered_and_the_connection_stays() -> None:
    """A broker that answers PINGREQ: the client pings while idle and stays connected (three pings seen)."""
    pings = asyncio.Event()
    seen = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        await read_packet(reader)
        writer.write(CONNACK_311)
        while True:
            kind, _ = await read_packet(reader)
            if kind == 0xC0:
                writer.write(b"\xd0\x00")
                seen += 1
                if seen == 3:
                    pings.set()

    async with hostile(script) as port:
        async with client_for(port, PROTOCOL_311, keepalive=1) as client:
            async with asyncio.timeout(GUARD):
                await pings.wait()
            assert client.connected


async def test_pubacks_for_unknown_or_repeated_ids_are_ignored() -> None:
    """Before each real PUBACK the broker sends one for an id never used, and after it the same again."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(CONNACK_5)
        while True:
            kind, body = await read_packet(reader)
            if kind >> 4 == 3:
                size = int.from_bytes(body[:2], "big")
                pid = body[2 + size:4 + size]
                writer.write(b"\x40\x02\xfe\xdc" + b"\x40\x02" + pid + b"\x40\x03" + pid + b"\x87")

    acks = Collected()
    async with hostile(script) as port:
        async with client_for(port) as client:
            pids = [client.put(f"wire/t/{i}", b"x", False, acks) for i in range(20)]
            client.flush()
            await acks.until(lambda: len(acks.codes) == 20)
            assert client.connected and client.in_flight == 0
            assert await client.publish("wire/t/more", b"x") == 0
    # The first PUBACK of each id counted (success), the repeated one (0x87) and the unknown one ignored.
    assert acks.codes == dict.fromkeys(pids, 0) and acks.errors == []


async def test_a_message_over_the_broker_maximum_packet_size_is_not_sent() -> None:
    """CONNACK with Maximum Packet Size 100: `put` refuses a bigger message (nothing reaches the broker) and
    sends the rest; Receive Maximum and Server Keep Alive are read from the same CONNACK."""
    received: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(b"\x20\x0e\x00\x00\x0b\x27\x00\x00\x00\x64\x21\x00\x07\x13\x00\x09")
        while True:
            kind, body = await read_packet(reader)
            if kind >> 4 == 3:
                size = int.from_bytes(body[:2], "big")
                received.append(body[2:2 + size])
                writer.write(b"\x40\x02" + body[2 + size:4 + size])

    acks = Collected()
    async with hostile(script) as port:
        async with client_for(port) as client:
            assert (client.max_packet, client.receive_maximum, client.keepalive) == (100, 7, 9)
            small = client.put("wire/small", b"x" * 50, False, acks)
            # 2 + 2 + 8 (topic) + 2 + 1 + 85 = 100 bytes: fits; one byte more does not.
            fits = client.put("wire/big", b"x" * 85, False, acks)
            assert client.put("wire/big", b"x" * 86, False, acks) == -PACKET_TOO_LARGE
            assert client.put("wire/big", b"x" * 1_000_000, True, acks) == -PACKET_TOO_LARGE
            assert client.put("wire/+/bad", b"x", False, acks) == -TOPIC_NAME_INVALID
            client.flush()
            await acks.until(lambda: len(acks.codes) == 2)
            assert set(acks.codes) == {small, fits}
            with pytest.raises(MqttError, match="packet too large"):
                await client.publish("wire/big", b"x" * 200)
    assert received == [b"wire/small", b"wire/big"]


async def test_flow_control_holds_writes_while_the_broker_does_not_read() -> None:
    """A broker that stops reading after the CONNACK: the transport's buffer fills, `paused` is set and
    `writable()` waits; when the connection is then dropped, the wait ends in MqttError, not a hang."""
    stop_reading = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(CONNACK_5)
        await stop_reading.wait()
        writer.transport.abort()

    acks = Collected()
    async with hostile(script) as port:
        async with client_for(port) as client:
            payload = b"x" * 60_000
            async with asyncio.timeout(GUARD):
                while not client.paused:
                    for _ in range(20):
                        client.put("wire/t", payload, False, acks)
                    client.flush()
                    await asyncio.sleep(0)
            waiting = asyncio.create_task(client.writable())
            await asyncio.sleep(0.01)
            assert not waiting.done()
            stop_reading.set()
            with pytest.raises(MqttError):
                async with asyncio.timeout(GUARD):
                    await waiting
    assert acks.errors and acks.codes == {}


# ---- through the publisher: nothing lost from the journal -------------------------------------------------


class FaultyBroker(Broker):
    """MQTT 5; one fault per connection, then a good broker: 1 a DISCONNECT (quota exceeded) after three
    PUBACKs, 2 garbage after one, 3 a PUBACK cut short and the connection closed, 4 a PUBLISH of its own;
    from 5 on every PUBLISH acknowledged."""

    CONNACK = CONNACK_5

    def __init__(self) -> None:
        super().__init__()
        self.acked: set[str] = set()
        self.count = 0

    def connected(self, writer: asyncio.StreamWriter) -> None:
        self.count = 0

    def published(self, topic: str, mid: bytes, writer: asyncio.StreamWriter) -> bool:
        self.count += 1
        fault = {1: (3, b"\xe0\x01\x97"), 2: (1, b"garbage!"), 3: (2, b"\x40\x03" + mid[:1]),
                 4: (2, b"\x30\x05\x00\x01ab\x00")}.get(self.connections)
        if fault is not None and self.count > fault[0]:
            writer.write(fault[1])
            return False
        writer.write(b"\x40\x02" + mid)
        self.acked.add(topic)
        return True


@pytest.mark.timeout(120)
async def test_the_publisher_loses_nothing_to_a_broker_that_misbehaves(tmp_path: Path) -> None:
    broker = FaultyBroker()
    topics = [f"dcim/t/cdu/cdu-{i}" for i in range(200)]
    publisher = await publish_through(broker, tmp_path, topics)
    print(f"{broker.connections} connections; {len(broker.acked & set(topics))} of {len(topics)} acknowledged")
    assert broker.connections >= 5, broker.connections
    assert set(topics) <= broker.acked
    assert not publisher.connected.is_set()


class SmallPacketBroker(Broker):
    """MQTT 5 with a Maximum Packet Size of 200 bytes; acknowledges everything it gets."""

    CONNACK = b"\x20\x08\x00\x00\x05\x27\x00\x00\x00\xc8"

    def __init__(self) -> None:
        super().__init__()
        self.received: list[str] = []

    def published(self, topic: str, mid: bytes, writer: asyncio.StreamWriter) -> bool:
        self.received.append(topic)
        return super().published(topic, mid, writer)


@pytest.mark.timeout(120)
async def test_a_message_over_the_maximum_packet_size_is_counted_as_refused_and_dropped(tmp_path: Path) -> None:
    broker = SmallPacketBroker()
    before = publisher_module.REFUSED.get(reason="packet too large")
    topics = [f"dcim/t/cdu/cdu-{i}" for i in range(10)]
    big = "dcim/t/cdu/" + "x" * 300  # a topic this long makes a packet over 200 bytes
    publisher = await publish_through(broker, tmp_path, [*topics[:5], big, *topics[5:]])
    assert [t for t in broker.received if t in topics] == topics  # in order, each once
    assert big not in broker.received and broker.connections == 1
    assert publisher_module.REFUSED.get(reason="packet too large") - before == 1
    assert publisher._refusals == {"packet too large": 1}
