"""SNMP v1/v2c requests without pysnmp: a small BER codec and one UDP socket per process (per family).

Why: pysnmp spends nearly all of a PDU poll's CPU in pyasn1, decoding the response into objects the driver
turns straight back into integers (bench/snmp.md). A community-based message is simple enough to encode and
decode by hand, and the OIDs repeat every poll, so both directions are mostly dictionary look-ups:

    Message  ::= SEQUENCE { version INTEGER (0 = v1, 1 = v2c), community OCTET STRING, pdu }
    pdu      ::= [A0 get | A1 getnext | A2 response | A3 set | A5 getbulk] IMPLICIT SEQUENCE {
                   request-id INTEGER,
                   error-status INTEGER  (getbulk: non-repeaters),
                   error-index  INTEGER  (getbulk: max-repetitions),
                   SEQUENCE OF SEQUENCE { name OBJECT IDENTIFIER, value } }
    value    ::= INTEGER 02 | OCTET STRING 04 | NULL 05 | OID 06 | IpAddress 40 | Counter32 41 | Gauge32 42
               | TimeTicks 43 | Opaque 44 | Counter64 46 | noSuchObject 80 | noSuchInstance 81 | endOfMibView 82

SNMPv3 wraps the same PDUs in its USM envelope (fast_v3.py). Both have the request interface of pysnmp's
path (`dcim.drivers.snmp.session.Session`), return plain Python values (int, bytes, a tuple for an OID) and the
`NoValue` markers for the three exception values, and raise the same `DriverError`s.

Hostile answers are bounded here, before any value reaches the driver's arithmetic: a length that runs past
its enclosing TLV or the datagram, a length of more than four length bytes, a request-id or error field of
more than 64 bits, or a varbind name that is not an OID (more than `MAX_ARCS` arcs, an arc past 2^32 - 1 or a
truncated subidentifier) make the whole message malformed (`ValueError` here, `BadResponse` for the driver).
A malformed *value* (an INTEGER of more than 64 bits, a Counter64 of more than 64, an OID value like the
above) is one `Malformed` marker in its varbind: the driver turns it into a BAD sample with the reason and the
rest of the poll stands. Nothing is decoded recursively, so nesting depth costs nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

from dcim.core.metrics import REGISTRY
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import BadResponse, DeviceTimeout, DeviceUnreachable, DriverError, WriteRejected
from dcim.drivers.snmp.config import SnmpDevice
from dcim.drivers.snmp.status import StatusError, status_error, status_name

Oid = tuple[int, ...]
VarBind = tuple[Oid, Any]
K = TypeVar("K")
V = TypeVar("V")

GET, GETNEXT, RESPONSE, SET, GETBULK = 0xA0, 0xA1, 0xA2, 0xA3, 0xA5
SYNTAX_TAGS = {"Integer32": 0x02, "Unsigned32": 0x42, "Gauge32": 0x42, "Counter32": 0x41}
# Encoded OIDs remembered both ways. Agents of one profile share their OIDs, so every profile's rows fit many
# times over; an agent that walks far outside the profiles (an endless table) evicts the oldest entries.
OID_CACHE = 50_000
# RFC 2578 7.1.3: at most 128 sub-identifiers, each at most 2^32 - 1.
MAX_ARCS = 128
MAX_ARC = 2**32 - 1
# Largest INTEGER body accepted: 64 bits, plus the leading zero byte of an unsigned Counter64 past 2^63.
MAX_INT_BYTES = 9

CACHE_EVICTIONS = REGISTRY.counter("dcim_snmp_cache_evictions_total",
                                   "SNMP codec cache entries dropped to keep the cache within its bound", ("cache",))


class NoValue:
    """noSuchObject, noSuchInstance, endOfMibView: "no value here"."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NO_SUCH_OBJECT = NoValue("noSuchObject")
NO_SUCH_INSTANCE = NoValue("noSuchInstance")
END_OF_MIB_VIEW = NoValue("endOfMibView")
ABSENT = (NoValue,)


class Malformed:
    """A varbind value that cannot be a reading (an INTEGER of 200 bytes): the reason is kept for the BAD sample."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Malformed({self.reason!r})"


class BoundedCache(Generic[K, V]):
    """A dict with at most `size` entries; inserting into a full one drops the oldest (counted as `name`).

    First in, first out rather than least recently used: a hit costs one dict look-up, which is all the hot
    path can afford, and the profiles' OIDs are re-inserted at once after an eviction storm."""

    __slots__ = ("_data", "name", "size")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._data: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self._data.get(key)

    def put(self, key: K, value: V) -> V:
        data = self._data
        if len(data) >= self.size and key not in data:
            del data[next(iter(data))]
            CACHE_EVICTIONS.inc(cache=self.name)
        data[key] = value
        return value

    def __len__(self) -> int:
        return len(self._data)


# ---- BER -------------------------------------------------------------------------------------------------

def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _length(len(body)) + body


def _integer(tag: int, value: int) -> bytes:
    size = max(1, (value.bit_length() + 8) // 8)  # room for the sign bit
    return _tlv(tag, value.to_bytes(size, "big", signed=True))


def _unsigned(tag: int, value: int) -> bytes:
    size = max(1, (value.bit_length() + 8) // 8)  # a leading zero keeps the top bit clear
    return _tlv(tag, value.to_bytes(size, "big", signed=False))


def encode_oid(oid: Oid) -> bytes:
    if len(oid) < 2:
        raise ValueError(f"an OID needs two arcs at least: {oid}")
    out = bytearray()
    for arc in (oid[0] * 40 + oid[1], *oid[2:]):
        if arc < 0x80:
            out.append(arc)
            continue
        chunk = bytearray()
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        chunk[0] &= 0x7F
        out += chunk[::-1]
    return _tlv(0x06, bytes(out))


def decode_oid(body: bytes) -> Oid:
    """The arcs of an OBJECT IDENTIFIER's content; ValueError for one no agent may send (see MAX_ARCS)."""
    if not body:
        raise ValueError("empty OID")
    if len(body) > MAX_ARCS * 5:
        raise ValueError(f"OID of {len(body)} bytes")
    if body[-1] & 0x80:
        raise ValueError("truncated OID subidentifier")
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            if not arcs:
                # The first subidentifier packs two arcs: 40 x first + second (the first arc is 0, 1 or 2).
                first = min(value // 40, 2)
                arcs += [first, value - 40 * first]
            else:
                arcs.append(value)
            if arcs[-1] > MAX_ARC:
                raise ValueError(f"OID arc {arcs[-1]} beyond 2^32 - 1")
            value = 0
    if len(arcs) > MAX_ARCS:
        raise ValueError(f"OID of {len(arcs)} arcs")
    return tuple(arcs)


def _header(data: bytes, at: int, limit: int = -1) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the TLV at `at`, which must end by `limit` (by default the
    end of `data`). ValueError for a length that runs past it: a hostile length never makes a slice of
    something that is not there, and never reads into a neighbouring TLV."""
    if limit < 0:
        limit = len(data)
    if at + 2 > limit:
        raise ValueError("truncated BER header")
    tag = data[at]
    first = data[at + 1]
    if first < 0x80:
        end = at + 2 + first
        if end > limit:
            raise ValueError(f"BER length {first} runs past the message")
        return tag, at + 2, end
    count = first & 0x7F
    if count == 0 or count > 4:
        raise ValueError("unsupported BER length")
    start = at + 2 + count
    end = start + int.from_bytes(data[at + 2:start], "big")
    if end > limit:
        raise ValueError(f"BER length {end - start} runs past the message")
    return tag, start, end


def _int(data: bytes, start: int, end: int) -> int:
    """A signed INTEGER field of the message (request-id, error-status, msgID, boots, ...): at most 64 bits."""
    if not 0 < end - start <= 8:
        raise ValueError(f"INTEGER field of {end - start} bytes")
    return int.from_bytes(data[start:end], "big", signed=True)


class Codec:
    """Encodes requests and decodes responses, remembering the OIDs it has seen both ways (bounded)."""

    def __init__(self, cache_size: int = OID_CACHE) -> None:
        self._oid_bytes: BoundedCache[Oid, bytes] = BoundedCache("oid_bytes", cache_size)
        self._oids: BoundedCache[bytes, Oid] = BoundedCache("oids", cache_size)

    def cache_sizes(self) -> tuple[int, int]:
        """(encoded OIDs, decoded OIDs) held now; never more than the bound each."""
        return len(self._oid_bytes), len(self._oids)

    def oid_bytes(self, oid: Oid) -> bytes:
        found = self._oid_bytes.get(oid)
        if found is None:
            found = self._oid_bytes.put(oid, encode_oid(oid))
        return found

    def request(self, version: int, community: bytes, pdu_tag: int, request_id: int, a: int, b: int,
                var_binds: Sequence[tuple[Oid, bytes]]) -> bytes:
        """`var_binds`: (oid, encoded value); a,b: error-status/index, or non-repeaters/max-repetitions."""
        pdu = self.pdu_bytes(pdu_tag, request_id, a, b, var_binds)
        return _tlv(0x30, _integer(0x02, version) + _tlv(0x04, community) + pdu)

    def response(self, data: bytes) -> tuple[int, int, int, list[VarBind]]:
        """(request-id, error-status, error-index, varbinds) of a Response-PDU; ValueError if it is none."""
        tag, at, end = _header(data, 0)
        if tag != 0x30:
            raise ValueError("not an SNMP message")
        _t, _s, at = _header(data, at, end)  # version
        _t, _s, at = _header(data, at, end)  # community
        tag, request_id, status, index, var_binds = self.pdu(data, at, end)
        if tag != RESPONSE:
            raise ValueError(f"not a response PDU (tag {tag:#x})")
        return request_id, status, index, var_binds

    def pdu(self, data: bytes, at: int, limit: int = -1) -> tuple[int, int, int, int, list[VarBind]]:
        """(tag, request-id, error-status, error-index, varbinds) of the PDU at `at`. Every TLV must lie
        within its parent; ValueError otherwise (see the module's docstring)."""
        tag, at, pdu_end = _header(data, at, limit)
        numbers = []
        for _ in range(3):
            _t, s, e = _header(data, at, pdu_end)
            numbers.append(_int(data, s, e))
            at = e
        _t, at, end = _header(data, at, pdu_end)
        out: list[VarBind] = []
        oids = self._oids
        while at < end:
            _t, s, bind_end = _header(data, at, end)
            name_tag, os_, oe = _header(data, s, bind_end)
            if name_tag != 0x06:
                raise ValueError(f"varbind name is not an OID (tag {name_tag:#x})")
            raw = data[os_:oe]
            oid = oids.get(raw)
            if oid is None:
                oid = oids.put(raw, decode_oid(raw))
            value_tag, vs, ve = _header(data, oe, bind_end)
            out.append((oid, _value(value_tag, data[vs:ve])))
            at = bind_end
        return tag, numbers[0], numbers[1], numbers[2], out

    def pdu_bytes(self, pdu_tag: int, request_id: int, a: int, b: int,
                  var_binds: Sequence[tuple[Oid, bytes]]) -> bytes:
        bindings = b"".join(_tlv(0x30, self.oid_bytes(oid) + value) for oid, value in var_binds)
        pdu = _integer(0x02, request_id) + _integer(0x02, a) + _integer(0x02, b) + _tlv(0x30, bindings)
        return _tlv(pdu_tag, pdu)


_UNSIGNED_NAMES = {0x41: "Counter32", 0x42: "Gauge32", 0x43: "TimeTicks", 0x46: "Counter64"}


def _value(tag: int, body: bytes) -> Any:
    if tag == 0x02:
        if not 0 < len(body) <= 8:
            return Malformed(f"INTEGER of {len(body)} bytes (at most 8)")
        return int.from_bytes(body, "big", signed=True)
    if tag in (0x41, 0x42, 0x43, 0x46):
        # Counter64 holds 64 bits, the others 32; either may carry one leading zero byte.
        bits = 64 if tag == 0x46 else 32
        value = int.from_bytes(body, "big", signed=False)
        if not body or len(body) > MAX_INT_BYTES or value.bit_length() > bits:
            return Malformed(f"{_UNSIGNED_NAMES[tag]} of {len(body)} bytes (at most {bits} bits)")
        return value
    if tag == 0x80:
        return NO_SUCH_OBJECT
    if tag == 0x81:
        return NO_SUCH_INSTANCE
    if tag == 0x82:
        return END_OF_MIB_VIEW
    if tag == 0x06:
        try:
            return decode_oid(body)
        except ValueError as err:
            return Malformed(f"OID value: {err}")
    if tag == 0x05:
        return None
    return bytes(body)  # OCTET STRING, IpAddress, Opaque: not numbers, the driver says so


_NULL = b"\x05\x00"

# The codec's pieces under public names, for the simulator's agent (which answers the same messages).
tlv, integer, unsigned, header, small_int = _tlv, _integer, _unsigned, _header, _int


# ---- transport ---------------------------------------------------------------------------------------------

class _Endpoint(asyncio.DatagramProtocol):
    """One UDP socket for every agent: responses find their request by request-id and source address."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[tuple[str, int], asyncio.Future[bytes]]] = {}
        self.codec = Codec()
        self.users = 0
        self._ids = itertools.count(random.randrange(1, 2**30))

    def next_id(self) -> int:
        return next(self._ids) % (2**31 - 1) + 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport, but is one.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            request_id = _peek_request_id(data)
        except (ValueError, IndexError):
            return  # not SNMP, or truncated: as if it never came
        entry = self.pending.get(request_id)
        if entry is None or entry[0] != (addr[0], addr[1]) or entry[1].done():
            return
        entry[1].set_result(data)

    def error_received(self, exc: Exception) -> None:
        # The socket is shared and unconnected: an error here names no agent. Requests time out instead.
        return None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _peek_request_id(data: bytes) -> int:
    """The request-id of a v1/v2c message, the msgID of a v3 one (its PDU may be encrypted)."""
    _t, at, _e = _header(data, 0)
    _t, s, at = _header(data, at)
    if data[s:at] == b"\x03":
        _t, at, _e = _header(data, at)  # msgGlobalData
    else:
        _t, _s, at = _header(data, at)  # community
        _t, at, _e = _header(data, at)  # PDU
    _t, s, e = _header(data, at)
    return _int(data, s, e)


async def _endpoint(context: DriverContext, key: str, family: int) -> _Endpoint:
    """The process's socket for one address family, made once (drivers may open concurrently)."""
    lock = context.shared.setdefault("snmp_fast_lock", asyncio.Lock())
    async with lock:
        endpoint = context.shared.get(key)
        if isinstance(endpoint, _Endpoint) and endpoint.transport is not None and not endpoint.transport.is_closing():
            return endpoint
        loop = asyncio.get_running_loop()
        anywhere = "::" if family == socket.AF_INET6 else "0.0.0.0"
        _transport, endpoint = await loop.create_datagram_endpoint(_Endpoint, local_addr=(anywhere, 0),
                                                                   family=family)
        context.shared[key] = endpoint
        return endpoint


class FastSession:
    """Requests to one v1/v2c agent, with the interface of `dcim.drivers.snmp.session.Session`."""

    def __init__(self, device: SnmpDevice, context: DriverContext) -> None:
        if device.version == "3":
            raise ValueError("FastSession speaks SNMPv1/v2c only")
        self.device = device
        self.context = context
        self.version = 0 if device.version == "1" else 1
        self.community = device.community.encode()
        # None: writes are refused (never sent with the read community).
        self.write_community = device.write_community.encode() if device.write_community else None
        self.address = (device.host, device.port)
        self._endpoint: _Endpoint | None = None
        self._key = "snmp_fast_endpoint"

    @property
    def where(self) -> str:
        return f"{self.device.id} ({self.device.host}:{self.device.port})"

    async def _open(self) -> _Endpoint:
        if self._endpoint is None:
            family, address = await self._resolve()
            self._key = "snmp_fast_endpoint6" if family == socket.AF_INET6 else "snmp_fast_endpoint"
            self._endpoint = await _endpoint(self.context, self._key, family)
            self._endpoint.users += 1
            self.address = address
        return self._endpoint

    async def _resolve(self) -> tuple[int, tuple[str, int]]:
        host, port = self.device.host, self.device.port
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as err:
                raise DeviceUnreachable(f"{self.where}: cannot resolve {host}: {err}") from err
            # IPv4 first when a name has both ("localhost" is often ::1 first; agents listen on IPv4 more).
            family, _type, _proto, _name, sockaddr = min(infos, key=lambda info: info[0] != socket.AF_INET)
            return family, (str(sockaddr[0]), port)
        return (socket.AF_INET6 if literal.version == 6 else socket.AF_INET), (str(literal), port)

    async def _request(self, pdu_tag: int, a: int, b: int, var_binds: Sequence[tuple[Oid, bytes]],
                       community: bytes | None = None) -> list[VarBind]:
        endpoint = await self._open()
        request_id = endpoint.next_id()
        message = endpoint.codec.request(self.version, community or self.community, pdu_tag, request_id, a, b,
                                         var_binds)
        data = await self._send_with_retries(endpoint, request_id, lambda: message)
        return self._decode(endpoint, data, request_id, var_binds)

    async def _send_with_retries(self, endpoint: _Endpoint, request_id: int, build: Callable[[], bytes]) -> bytes:
        """Send, wait up to the timeout for the answer to `request_id`, try again up to `retries` times.
        `build` makes the message for each try (SNMPv3 needs a fresh one: engine time, privacy salt)."""
        loop = asyncio.get_running_loop()
        tries = self.device.retries + 1
        try:
            for _ in range(tries):
                future: asyncio.Future[bytes] = loop.create_future()
                endpoint.pending[request_id] = (self.address, future)
                assert endpoint.transport is not None
                endpoint.transport.sendto(build(), self.address)
                try:
                    async with asyncio.timeout(self.device.timeout):
                        return await future
                except TimeoutError:
                    continue
        finally:
            endpoint.pending.pop(request_id, None)
        raise DeviceTimeout(f"{self.where}: no answer after {tries} tr{'y' if tries == 1 else 'ies'} "
                            f"of {self.device.timeout:g}s")

    def _decode(self, endpoint: _Endpoint, data: bytes, request_id: int,
                asked: Sequence[tuple[Oid, bytes]]) -> list[VarBind]:
        try:
            answered_id, status, index, var_binds = endpoint.codec.response(data)
        except (ValueError, IndexError) as err:
            raise BadResponse(f"{self.where}: malformed response: {err}") from err
        if answered_id != request_id:
            raise BadResponse(f"{self.where}: response to another request")
        if status:
            raise status_error(self.where, status_name(status), index, [oid for oid, _ in asked])
        return var_binds

    async def get(self, oids: Sequence[Oid]) -> list[VarBind]:
        return await self._request(GET, 0, 0, [(oid, _NULL) for oid in oids])

    async def next(self, oids: Sequence[Oid]) -> list[VarBind]:
        """GETNEXT; on SNMPv1 a column past the end of the MIB fails the request (noSuchName): that column
        reads endOfMibView and the others are asked again."""
        remaining = list(range(len(oids)))
        out: dict[int, VarBind] = {}
        while remaining:
            try:
                answer = await self._request(GETNEXT, 0, 0, [(oids[i], _NULL) for i in remaining])
            except StatusError as err:
                if err.status != "noSuchName" or not 0 < err.index <= len(remaining):
                    raise
                position = remaining.pop(err.index - 1)
                out[position] = (oids[position], END_OF_MIB_VIEW)
                continue
            out.update(zip(remaining, answer, strict=False))
            break
        return [out[i] for i in sorted(out)]

    async def bulk(self, oids: Sequence[Oid], max_repetitions: int) -> list[VarBind]:
        if self.version == 0:
            return await self.next(oids)
        return await self._request(GETBULK, 0, max_repetitions, [(oid, _NULL) for oid in oids])

    async def set(self, oid: Oid, value: int, syntax: str) -> None:
        tag = SYNTAX_TAGS.get(syntax)
        if tag is None:
            raise DriverError(f"{self.where}: cannot SET a {syntax}")
        if self.write_community is None:
            raise WriteRejected(f"{self.where}: no write_community configured: SNMP writes are refused")
        encoded = _integer(tag, value) if tag == 0x02 else _unsigned(tag, value)
        await self._request(SET, 0, 0, [(oid, encoded)], community=self.write_community)

    def close(self) -> None:
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            endpoint.users -= 1
            if endpoint.users <= 0:
                endpoint.close()
                if self.context.shared.get(self._key) is endpoint:
                    del self.context.shared[self._key]
