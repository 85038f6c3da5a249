"""MQTT on one socket for the publisher's send path: CONNECT, QoS 1 PUBLISH, PUBACK, PINGREQ, DISCONNECT.

The publisher publishes every reading at QoS 1. Through aiomqtt and paho that cost, per message, an
`MQTTMessage` and an `MQTTMessageInfo` holding a `threading.Condition`, a socket `send`, and per PUBACK three
`recv` calls, an MQTT 5 `Properties` and a `ReasonCode` object: about a fifth of the daemon's CPU at a
thousand devices. This module does only what the publisher needs: `put` encodes a PUBLISH (the topic's bytes
are kept per topic) into a list that `flush` writes in one `transport.write`; `data_received` reads
PUBACKs by slicing and hands each to the `Acks` its message was put with. Subscribing is not done here (the
ingest and the tests keep aiomqtt).

MQTT 3.1.1 and 5. CONNECT as paho sent it for the publisher: clean session (3.1.1) or clean start without a
session expiry (5), client id, user name and password, keepalive, a will. The CONNACK is checked (a refusal
becomes `MqttError` naming the reason); of its MQTT 5 properties the client keeps Receive Maximum, Maximum
Packet Size and Server Keep Alive, refuses a Maximum QoS of 0, and ignores the rest.

Defensive by construction: everything from the broker is checked before it is used. Only CONNACK (once,
first), PUBACK, PINGRESP and an MQTT 5 DISCONNECT may arrive; any other packet type, a PUBLISH included
(nothing is subscribed), a remaining length of more than four bytes or over `MAX_INCOMING`, a packet of the
wrong size, a property that is not MQTT 5's, or the connection closing in the middle of a packet ends the
connection with `MqttError` naming what was wrong; the receive buffer never holds more than one packet. A
PUBACK for a packet id not in flight (a duplicate, or one never sent) is ignored. Nothing raised while
reading escapes into the event loop: it ends the connection. Idle for `keepalive` seconds, the client sends
PINGREQ; no PINGRESP within `keepalive` more seconds and the connection counts as lost, so a half-open
connection cannot hold the publisher.

Every failure is one exception type, `MqttError`: raised by `connect`, `put`, `flush`, `publish` and
`writable`, and handed to every `Acks` with messages in flight (`lost`) when the connection ends.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from types import TracebackType
from typing import NamedTuple, Protocol, Self

PROTOCOL_311 = 4
PROTOCOL_5 = 5
# The publisher subscribes to nothing: what the broker may send it is small. A bound on what is buffered.
MAX_INCOMING = 1 << 20
MAX_PACKET = 268_435_455 + 5  # the largest packet MQTT can encode (remaining length of four bytes)
TOPIC_CACHE = 50_000  # topics whose encoded bytes are kept (one per device and kind in the daemon)

PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"  # 3.1.1; in MQTT 5 the same two bytes are reason 0x00, normal disconnection

PACKET_TOO_LARGE = 0x95  # `put` refuses a message bigger than the broker's Maximum Packet Size with this code
TOPIC_NAME_INVALID = 0x90  # ... and a topic MQTT cannot carry (empty, wildcards, NUL, over 65,535 bytes)

CONNACK_311 = {1: "unacceptable protocol version", 2: "client identifier rejected", 3: "server unavailable",
               4: "bad user name or password", 5: "not authorized"}
REASONS = {
    0x00: "success", 0x04: "disconnect with will message", 0x80: "unspecified error", 0x81: "malformed packet",
    0x82: "protocol error", 0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password", 0x87: "not authorized",
    0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned", 0x8B: "server shutting down",
    0x8C: "bad authentication method", 0x8D: "keep alive timeout", 0x8E: "session taken over",
    0x8F: "topic filter invalid", 0x90: "topic name invalid", 0x91: "packet identifier in use",
    0x93: "receive maximum exceeded", 0x94: "topic alias invalid", 0x95: "packet too large",
    0x96: "message rate too high", 0x97: "quota exceeded", 0x98: "administrative action",
    0x99: "payload format invalid", 0x9A: "retain not supported", 0x9B: "QoS not supported",
    0x9C: "use another server", 0x9D: "server moved", 0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded", 0xA0: "maximum connect time", 0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}

# MQTT 5 properties by id: their encoding, to read or skip them. 1, 2, 4: an integer of that many bytes;
# "v": a variable byte integer; "s": a string or binary data (two-byte length); "p": a string pair.
PROPERTIES: dict[int, int | str] = {
    0x01: 1, 0x02: 4, 0x03: "s", 0x08: "s", 0x09: "s", 0x0B: "v", 0x11: 4, 0x12: "s", 0x13: 2, 0x15: "s",
    0x16: "s", 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: "s", 0x1C: "s", 0x1F: "s", 0x21: 2, 0x22: 2, 0x23: 2,
    0x24: 1, 0x25: 1, 0x26: "p", 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
}
RECEIVE_MAXIMUM = 0x21
MAXIMUM_PACKET_SIZE = 0x27
MAXIMUM_QOS = 0x24
SERVER_KEEP_ALIVE = 0x13
REASON_STRING = 0x1F

_PID = struct.Struct(">H")
_PID5 = struct.Struct(">HB")  # MQTT 5: the packet id and an empty property list


class MqttError(Exception):
    """The connection to the broker failed, was refused or was lost; `code` is the broker's reason code
    (CONNACK return code, MQTT 5 reason code) when it gave one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Acks(Protocol):
    """What messages are put with: told of each one's PUBACK, or of the connection's end."""

    def puback(self, pid: int, code: int) -> None:
        """The broker answered the message of packet id `pid`: reason code `code` (0 in MQTT 3.1.1)."""

    def lost(self, error: MqttError) -> None:
        """The connection ended with messages of this `Acks` unacknowledged (they never will be)."""


class Will(NamedTuple):
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def reason(code: int) -> str:
    return REASONS.get(code, f"reason code {code:#04x}")


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (remaining length, property length)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _string(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"{len(data)} bytes: longer than MQTT's 65,535")
    return _PID.pack(len(data)) + data


def _read_varint(data: bytes, i: int, end: int) -> tuple[int, int]:
    """The variable byte integer at data[i:end] (a property length) and the offset after it; MqttError if
    malformed."""
    value, after = _remaining(data, i, end, "a variable byte integer")
    if after < 0:
        raise MqttError("malformed packet from the broker: a variable byte integer is cut short")
    return value, after


def _remaining(data: bytes, i: int, n: int, what: str = "a remaining length") -> tuple[int, int]:
    """A fixed header's remaining length (or another variable byte integer: `what`) at data[i:n] and the
    offset after it; (0, -1) if not all of it is here yet. MqttError if it runs over four bytes."""
    value = shift = 0
    for k in range(4):
        if i + k >= n:
            return 0, -1
        byte = data[i + k]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + k + 1
        shift += 7
    raise MqttError(f"malformed packet from the broker: {what} of more than 4 bytes")


def read_properties(data: bytes, i: int, end: int) -> tuple[dict[int, int | bytes], int]:
    """The MQTT 5 properties at data[i:end] (their length first): id -> value (user properties skipped), and
    the offset after them. MqttError on an unknown property or one that runs past the packet."""
    length, i = _read_varint(data, i, end)
    stop = i + length
    if stop > end:
        raise MqttError(f"malformed packet from the broker: properties of {length} bytes in {end - i}")
    found: dict[int, int | bytes] = {}
    while i < stop:
        ident = data[i]
        kind = PROPERTIES.get(ident)
        i += 1
        if kind is None:
            raise MqttError(f"malformed packet from the broker: unknown property {ident:#04x}")
        if kind == "v":
            found[ident], i = _read_varint(data, i, stop)
            continue
        if isinstance(kind, int):
            if i + kind > stop:
                raise MqttError(f"malformed packet from the broker: property {ident:#04x} cut short")
            found[ident] = int.from_bytes(data[i:i + kind], "big")
            i += kind
            continue
        for _ in range(2 if kind == "p" else 1):
            if i + 2 > stop or i + 2 + (data[i] << 8 | data[i + 1]) > stop:
                raise MqttError(f"malformed packet from the broker: property {ident:#04x} cut short")
            size = data[i] << 8 | data[i + 1]
            if kind == "s":
                found[ident] = bytes(data[i + 2:i + 2 + size])
            i += 2 + size
    return found, stop


def _describe(code: int, properties: dict[int, int | bytes]) -> str:
    text = reason(code)
    said = properties.get(REASON_STRING)
    if isinstance(said, bytes) and said:
        text += f" ({said[:200].decode('utf-8', 'replace')})"
    return text


class _One:
    """The `Acks` of a single message: a future of its reason code."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def puback(self, pid: int, code: int) -> None:
        if not self.future.done():
            self.future.set_result(code)

    def lost(self, error: MqttError) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class MqttClient(asyncio.Protocol):
    """One connection to an MQTT broker, publishing at QoS 1. `async with MqttClient(...) as client:`
    connects (CONNACK within `connect_timeout`) and, on the way out, disconnects cleanly.

    Publishing, for many messages: `put` each (the packet id, or minus a reason code for a message that
    cannot be sent: `PACKET_TOO_LARGE`, `TOPIC_NAME_INVALID`), then `flush` once; each message's `Acks` hears
    of its PUBACK. Keep at most `receive_maximum` unacknowledged, and `await writable()` while `paused`.
    For one message: `await publish(...)`, which returns its PUBACK's reason code.
    """

    def __init__(self, host: str, port: int, *, client_id: str, protocol: int = PROTOCOL_5,
                 username: str | None = None, password: str | None = None, keepalive: int = 60,
                 will: Will | None = None, tls: ssl.SSLContext | None = None, connect_timeout: float = 10.0,
                 on_connect: Callable[[MqttClient], None] | None = None) -> None:
        if protocol not in (PROTOCOL_311, PROTOCOL_5):
            raise ValueError(f"MQTT protocol level {protocol}: 4 (3.1.1) or 5")
        self.host = host
        self.port = port
        self.client_id = client_id
        self.protocol = protocol
        self.username = username
        self.password = password
        self.keepalive = keepalive
        self.will = will
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.on_connect = on_connect
        # From the CONNACK (MQTT 5 properties; the protocol's own bounds otherwise).
        self.receive_maximum = 65535
        self.max_packet = MAX_PACKET
        self.paused = False
        self._v5 = protocol == PROTOCOL_5
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._error: MqttError | None = None
        self._connack: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._resumed: asyncio.Future[None] | None = None
        self._buffer = b""
        self._inflight: dict[int, Acks] = {}
        self._next_pid = 0
        self._out: list[bytes] = []
        self._topics: dict[str, bytes] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._last_out = 0.0
        self._ping_deadline = 0.0

    # ---- connection --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._error is None and self._transport is not None and self._connack is not None \
            and self._connack.done()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def connect(self) -> None:
        if self._loop is not None:
            raise RuntimeError("an MqttClient connects once; make a new one to connect again")
        self._loop = loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._closed = loop.create_future()
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(lambda: self, self.host, self.port, ssl=self.tls,
                                             server_hostname=self.host if self.tls is not None else None)
                await self._connack
        except TimeoutError:
            self._abort(MqttError(f"{where}: not connected within {self.connect_timeout:g} s"))
            raise self._error_now() from None
        except OSError as err:  # refused, unreachable, TLS (ssl.SSLError is an OSError)
            self._abort(MqttError(f"{where}: {err}"))
            raise self._error_now() from None
        except BaseException as err:  # MqttError from the CONNACK, a cancellation
            self._abort(err if isinstance(err, MqttError) else MqttError(f"{where}: connect cancelled"))
            raise
        if self.on_connect is not None:
            self.on_connect(self)

    def _error_now(self) -> MqttError:
        assert self._error is not None
        return self._error

    async def disconnect(self) -> None:
        """A clean end: DISCONNECT, then the socket closed once what was written is sent (waited for a
        second at most). Messages still unacknowledged are `lost` to their `Acks`."""
        transport = self._transport
        if transport is not None and self._error is None:
            transport.write(DISCONNECT)
        self._fail(MqttError("disconnected"), abort=False)
        closed = self._closed
        if transport is not None and closed is not None and not closed.done():
            await asyncio.wait((closed,), timeout=1.0)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.disconnect()

    def _abort(self, error: MqttError) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.cancel()
        self._fail(error, abort=True)

    def _fail(self, error: MqttError, *, abort: bool = True) -> None:
        """The connection is over: every waiter is told, the socket closed (at once, unless `abort` is
        False: then after what was written)."""
        if self._error is not None:
            return
        self._error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        if transport is not None:
            if abort:
                transport.abort()
            else:
                transport.close()
        self._buffer = b""
        self._out.clear()
        connack = self._connack
        if connack is not None and not connack.done():
            connack.set_exception(error)
            connack.exception()  # retrieved: `connect` raises it if it still waits
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_exception(error)
            resumed.exception()  # retrieved: `writable` may have stopped waiting for it
        inflight, self._inflight = self._inflight, {}
        for acks in {id(a): a for a in inflight.values()}.values():
            acks.lost(error)

    # ---- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._connect_packet())
        assert self._loop is not None
        self._last_out = self._loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._buffer:
            error = MqttError(f"the connection ended in the middle of a packet from the broker "
                              f"({len(self._buffer)} bytes of it read)")
        elif exc is not None:
            error = MqttError(f"connection lost: {exc}")
        else:
            error = MqttError("connection closed by the broker")
        self._fail(error)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def eof_received(self) -> bool:
        return False  # the broker will send no more: close (connection_lost says why)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    async def writable(self) -> None:
        """Return once the transport takes more (at once unless `paused`); MqttError if the connection ends."""
        while self.paused:
            if self._error is not None:
                raise MqttError(f"not connected: {self._error}", self._error.code)
            if self._resumed is None:
                assert self._loop is not None
                self._resumed = self._loop.create_future()
            await self._resumed
        if self._error is not None:
            raise MqttError(f"not connected: {self._error}", self._error.code)

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        if self._buffer:
            data = self._buffer + data
        try:
            used = self._read(data)
        except MqttError as err:
            self._fail(err)
            return
        except Exception as err:  # never into the event loop: a bug here ends this connection only
            self._fail(MqttError(f"reading the broker's packets failed: {err!r}"))
            return
        self._buffer = data[used:] if used < len(data) else b""

    # ---- receiving ---------------------------------------------------------------------------------

    def _read(self, data: bytes) -> int:
        """Handle every whole packet in `data`; the offset after the last. Raises MqttError."""
        i, n = 0, len(data)
        inflight = self._inflight
        while i + 2 <= n:
            first = data[i]
            length = data[i + 1]
            if length < 0x80:
                start = i + 2
            else:
                length, start = _remaining(data, i + 1, n)
                if start < 0:
                    break  # the length is not all here yet
            end = start + length
            if first == 0x40:  # PUBACK: packet id, then (MQTT 5) a reason code and properties
                if length != 2 and not (self._v5 and 2 < length <= MAX_INCOMING):
                    raise MqttError(f"malformed PUBACK from the broker ({length} bytes)")
                if end > n:
                    break
                pid = data[start] << 8 | data[start + 1]
                acks = inflight.pop(pid, None)
                if acks is not None:  # else a duplicate, or an id never sent: ignored
                    acks.puback(pid, data[start + 2] if length > 2 else 0)
                i = end
                continue
            self._check_header(first, length)
            if end > n:
                break
            self._packet(first, data, start, end)
            i = end
        return i

    def _check_header(self, first: int, length: int) -> None:
        """A packet other than PUBACK: one the broker may send us, of a plausible size (before its body is
        waited for: nothing is buffered for a packet that will be refused)."""
        kind = first >> 4
        if kind == 3:
            raise MqttError("the broker sent a PUBLISH, though this client subscribed to nothing")
        if first not in (0x20, 0xD0, 0xE0) or (first == 0xE0 and not self._v5):
            raise MqttError(f"unexpected packet from the broker (first byte {first:#04x})")
        if length > MAX_INCOMING:
            raise MqttError(f"a packet of {length} bytes from the broker (more than {MAX_INCOMING})")
        if first == 0xD0 and length != 0:
            raise MqttError(f"malformed PINGRESP from the broker ({length} bytes)")
        if first == 0x20 and (length < 2 or (not self._v5 and length != 2)):
            raise MqttError(f"malformed CONNACK from the broker ({length} bytes)")

    def _packet(self, first: int, data: bytes, start: int, end: int) -> None:
        if first == 0xD0:  # PINGRESP
            self._ping_deadline = 0.0
        elif first == 0x20:
            self._connack_received(data, start, end)
        else:  # DISCONNECT (MQTT 5): a reason code (none: 0, normal) and properties
            code = data[start] if end > start else 0
            properties: dict[int, int | bytes] = {}
            if end > start + 1:
                properties, _ = read_properties(data, start + 1, end)
            said = _describe(code, properties) if code else "normal disconnection"
            raise MqttError(f"the broker disconnected: {said}", code)

    def _connack_received(self, data: bytes, start: int, end: int) -> None:
        connack = self._connack
        if connack is None or connack.done():
            raise MqttError("a second CONNACK from the broker")
        code = data[start + 1]
        if not self._v5:
            if code:
                raise MqttError(f"the broker refused the connection: {CONNACK_311.get(code, f'code {code}')}",
                                code)
        else:
            properties: dict[int, int | bytes] = {}
            if end > start + 2:
                properties, _ = read_properties(data, start + 2, end)
            if code >= 0x80:
                raise MqttError(f"the broker refused the connection: {_describe(code, properties)}", code)
            receive_maximum = properties.get(RECEIVE_MAXIMUM)
            if isinstance(receive_maximum, int):
                if receive_maximum == 0:
                    raise MqttError("malformed CONNACK from the broker: Receive Maximum 0")
                self.receive_maximum = receive_maximum
            max_packet = properties.get(MAXIMUM_PACKET_SIZE)
            if isinstance(max_packet, int):
                if max_packet == 0:
                    raise MqttError("malformed CONNACK from the broker: Maximum Packet Size 0")
                self.max_packet = max_packet
            if properties.get(MAXIMUM_QOS) == 0:
                raise MqttError("the broker takes QoS 0 only; the publisher needs QoS 1")
            keepalive = properties.get(SERVER_KEEP_ALIVE)
            if isinstance(keepalive, int):
                self.keepalive = keepalive
        connack.set_result(None)
        if self.keepalive > 0:
            assert self._loop is not None
            self._timer = self._loop.call_at(self._last_out + self.keepalive, self._tick)

    # ---- keepalive ---------------------------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        if self._error is not None or self._transport is None or self._loop is None:
            return
        now = self._loop.time()
        if self._ping_deadline and now >= self._ping_deadline:
            self._fail(MqttError(f"no PINGRESP within {self.keepalive} s: the broker stopped answering"))
            return
        due = self._last_out + self.keepalive
        if not self._ping_deadline and now >= due:
            self._transport.write(PINGREQ)
            self._last_out = now
            self._ping_deadline = now + self.keepalive
            due = now + self.keepalive
        self._timer = self._loop.call_at(min(due, self._ping_deadline) if self._ping_deadline else due,
                                         self._tick)

    # ---- sending -----------------------------------------------------------------------------------

    def _connect_packet(self) -> bytes:
        flags = 0x02  # clean session (3.1.1), clean start (5), as paho did for a new client
        body = bytearray(_string(b"MQTT"))
        payload = bytearray(_string(self.client_id.encode()))
        if self.will is not None:
            flags |= 0x04 | (self.will.qos & 3) << 3 | (0x20 if self.will.retain else 0)
            if self._v5:
                payload += b"\x00"  # no will properties
            payload += _string(self.will.topic.encode()) + _string(self.will.payload)
        if self.username is not None:
            flags |= 0x80
            payload += _string(self.username.encode())
            if self.password is not None:
                flags |= 0x40
                payload += _string(self.password.encode())
        body += bytes((self.protocol, flags)) + _PID.pack(self.keepalive)
        if self._v5:
            body += b"\x00"  # no properties: no session expiry (the session ends with the connection)
        body += payload
        return b"\x10" + varint(len(body)) + bytes(body)

    def _topic(self, topic: str) -> bytes | None:
        """A topic's bytes with their length, kept; None for a topic MQTT cannot publish to."""
        encoded = topic.encode()
        if not encoded or len(encoded) > 0xFFFF or b"+" in encoded or b"#" in encoded or b"\0" in encoded:
            return None
        if len(self._topics) >= TOPIC_CACHE:
            self._topics.clear()
        self._topics[topic] = prefixed = _PID.pack(len(encoded)) + encoded
        return prefixed

    def _pid(self) -> int:
        inflight = self._inflight
        if len(inflight) >= 65535:
            raise MqttError("65,535 messages in flight")
        pid = self._next_pid % 65535 + 1
        while pid in inflight:
            pid = pid % 65535 + 1
        self._next_pid = pid
        return pid

    def put(self, topic: str, payload: bytes, retain: bool, acks: Acks) -> int:
        """Encode a QoS 1 PUBLISH to go with the next `flush`; its packet id (`acks` hears of its PUBACK).
        A message that cannot be sent is not: minus `PACKET_TOO_LARGE` (over the broker's Maximum Packet
        Size) or minus `TOPIC_NAME_INVALID`. MqttError if the connection is gone."""
        if self._error is not None:
            raise MqttError(f"not connected: {self._error}", self._error.code)
        name = self._topics.get(topic)
        if name is None:
            name = self._topic(topic)
            if name is None:
                return -TOPIC_NAME_INVALID
        remaining = len(name) + len(payload) + (3 if self._v5 else 2)  # + the packet id (+ no properties)
        if remaining < 128:
            head = bytes((0x33 if retain else 0x32, remaining))
        elif remaining < 16384:
            head = bytes((0x33 if retain else 0x32, remaining & 0x7F | 0x80, remaining >> 7))
        else:
            head = (b"\x33" if retain else b"\x32") + varint(remaining)
        if len(head) + remaining > self.max_packet:
            return -PACKET_TOO_LARGE
        inflight = self._inflight
        pid = self._next_pid % 65535 + 1
        if pid in inflight:
            pid = self._pid()  # the next id along is still in flight: look further
        else:
            self._next_pid = pid
        self._out += (head, name, _PID5.pack(pid, 0) if self._v5 else _PID.pack(pid), payload)
        inflight[pid] = acks
        return pid

    def flush(self) -> None:
        """Write what `put` encoded, in one write. MqttError if the connection is gone."""
        transport = self._transport
        if self._error is not None or transport is None:
            self._out.clear()
            error = self._error or MqttError("not connected")
            raise MqttError(f"not connected: {error}", error.code)
        if self._out:
            transport.write(b"".join(self._out))
            self._out.clear()
            assert self._loop is not None
            self._last_out = self._loop.time()

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 10.0) -> int:  # noqa: ASYNC109
        """Publish one message at QoS 1 and return its PUBACK's reason code (0: success). MqttError if the
        connection ends first, no PUBACK comes within `timeout`, or the message cannot be sent."""
        one = _One()
        pid = self.put(topic, payload, retain, one)
        if pid < 0:
            raise MqttError(f"cannot publish to {topic!r}: {reason(-pid)}", -pid)
        self.flush()
        try:
            async with asyncio.timeout(timeout):
                return await one.future
        except TimeoutError:
            if self._inflight.get(pid) is one:  # no longer awaited: a late PUBACK is ignored
                del self._inflight[pid]
            raise MqttError(f"no PUBACK within {timeout:g} s") from None

    def __repr__(self) -> str:
        return f"MqttClient({self.host}:{self.port}, {len(self._inflight)} in flight)"
