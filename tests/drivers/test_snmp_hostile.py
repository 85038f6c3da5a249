"""The SNMP driver against hostile agents: small UDP agents written here, talking to the real driver.

Each agent decodes a request with the driver's own codec and answers with hand-made BER: a 200-byte INTEGER,
lengths that run past the datagram, OIDs of absurd arc counts or arcs, a table walk that never ends, objects
it does not have. The driver must answer with BAD samples and their reasons, or a `DriverError` for a message
that is wholly malformed, never anything else; its caches stay within their bounds; a SET without a write
community never leaves the driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config as snmp_config
from pysnmp.entity import engine as snmp_engine
from pysnmp.entity.rfc3413 import cmdrsp
from pysnmp.entity.rfc3413 import context as snmp_context
from pysnmp.proto import rfc1902, rfc1905
from structlog.testing import capture_logs

from dcim.core.samples import Quality, Sample
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import BadResponse, DriverError, WriteRejected
from dcim.drivers.profiles import Profile
from dcim.drivers.snmp import fast
from dcim.drivers.snmp.config import SnmpDevice
from dcim.drivers.snmp.driver import SnmpDriver
from dcim.drivers.snmp.points import Point

Oid = tuple[int, ...]
BASE: Oid = (1, 3, 6, 1, 4, 1, 99999)
POWER: Oid = (*BASE, 1, 0)  # scalar, scale 0.1
ENERGY: Oid = (*BASE, 2, 0)  # scalar, the well-behaved neighbour
OUTLETS: Oid = (*BASE, 3, 1)  # a column: outlet current
SWITCH: Oid = (*BASE, 4, 1)  # a writable column: outlet command


def profile(*extra: Point) -> Profile[Point]:
    points = [
        Point(name="power_w", oid=".".join(map(str, POWER)), scale=0.1),
        Point(name="energy_kwh", oid=".".join(map(str, ENERGY))),
        Point(name="current_a", oid=".".join(map(str, OUTLETS)) + ".*", index_tag="outlet",
              measurement="pdu_outlet", scale=0.1),
        Point(name="outlet_command", oid=".".join(map(str, SWITCH)) + ".*", index_tag="outlet", readable=False,
              writable=True, enum={1: "on", 2: "off"}),
        *extra,
    ]
    return Profile[Point](name="hostile", kind="pdu", protocol="snmp", points=points)


# ---- BER by hand --------------------------------------------------------------------------------------------

def integer(value: int) -> bytes:
    return fast._integer(0x02, value)


def raw_tlv(tag: int, body: bytes) -> bytes:
    return fast._tlv(tag, body)


def bind(oid: Oid, value: bytes) -> bytes:
    return fast._tlv(0x30, fast.encode_oid(oid) + value)


def response(community: bytes, request_id: int, binds: list[bytes], status: int = 0) -> bytes:
    pdu = integer(request_id) + integer(status) + integer(0) + fast._tlv(0x30, b"".join(binds))
    return fast._tlv(0x30, integer(1) + fast._tlv(0x04, community) + fast._tlv(0xA2, pdu))


@dataclass
class Request:
    community: bytes
    tag: int
    request_id: int
    a: int
    b: int
    oids: list[Oid]


Answer = Callable[[Request], bytes | None]


@dataclass
class Agent(asyncio.DatagramProtocol):
    """A v2c agent: `answer` makes the whole reply datagram (or None: silence). Counts requests by PDU tag."""

    answer: Answer
    seen: dict[int, int] = field(default_factory=dict)
    communities: list[bytes] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        _t, at, end = fast._header(data, 0)
        _t, _s, at = fast._header(data, at, end)
        _t, s, at = fast._header(data, at, end)
        community = data[s:at]
        tag, request_id, a, b, var_binds = fast.Codec().pdu(data, at, end)
        self.seen[tag] = self.seen.get(tag, 0) + 1
        self.communities.append(community)
        reply = self.answer(Request(community, tag, request_id, a, b, [oid for oid, _ in var_binds]))
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Any]]:
    """Start an agent on 127.0.0.1, port 0 (bound before anyone uses it); its port is `agent.port`."""
    transports: list[asyncio.DatagramTransport] = []

    async def start(answer: Answer) -> tuple[Agent, int]:
        loop = asyncio.get_running_loop()
        transport, agent = await loop.create_datagram_endpoint(lambda: Agent(answer), local_addr=("127.0.0.1", 0))
        transports.append(transport)
        return agent, transport.get_extra_info("sockname")[1]

    yield start
    for transport in transports:
        transport.close()


def device(port: int, **extra: Any) -> SnmpDevice:
    fields: dict[str, Any] = {"id": "evil", "kind": "pdu", "protocol": "snmp", "profile": "hostile",
                              "host": "127.0.0.1", "port": port, "timeout": 5.0, "retries": 0, "deadline": 60.0}
    return SnmpDevice.model_validate({**fields, **extra})


def scalars(values: dict[Oid, bytes], *, table: Callable[[Oid], list[bytes]] | None = None) -> Answer:
    """GET: each asked OID gets its hostile value (noSuchObject if absent); GETBULK: `table(cursor)` or the
    end of the MIB."""
    def answer(request: Request) -> bytes:
        if request.tag == fast.GET:
            binds = [bind(oid, values.get(oid, b"\x80\x00")) for oid in request.oids]
        elif request.tag == fast.GETBULK and table is not None:
            binds = [b for oid in request.oids for b in table(oid)][: max(1, request.b) * len(request.oids)]
        else:
            binds = [bind(oid, b"\x82\x00") for oid in request.oids]
        return response(request.community, request.request_id, binds)
    return answer


def by_point(samples: list[Sample]) -> dict[str, Sample]:
    return {s.point: s for s in samples if not s.tags}


async def read_once(dev: SnmpDevice, prof: Profile[Point] | None = None) -> list[Sample]:
    driver = SnmpDriver(dev, prof or profile(), DriverContext())
    try:
        return await driver.read()
    finally:
        await driver.close()


# ---- hostile values: BAD samples with reasons ----------------------------------------------------------------

NESTED = raw_tlv(0x30, b"")
for _ in range(200):
    NESTED = raw_tlv(0x30, NESTED)


@pytest.mark.parametrize(("value", "reason"), [
    (raw_tlv(0x02, b"\x7f" + b"\xff" * 199), "INTEGER of 200 bytes"),
    (raw_tlv(0x02, b""), "INTEGER of 0 bytes"),
    (raw_tlv(0x46, b"\x01" + b"\x00" * 19), "Counter64 of 20 bytes"),
    (raw_tlv(0x42, b"\x01\x00\x00\x00\x00"), "Gauge32 of 5 bytes"),
    (raw_tlv(0x04, b"12"), "not an integer"),
    (raw_tlv(0x04, b"x" * 5000), "chars)"),
    (raw_tlv(0x06, b"\x2b" + b"\x01" * 300), "OID value: OID of 302 arcs"),
    (raw_tlv(0x06, b"\x2b\x9f\xff\xff\xff\x7f"), "beyond 2^32 - 1"),
    (NESTED, "not an integer"),
    (b"\x05\x00", "not an integer: None"),
])
async def test_a_hostile_value_is_a_bad_sample_and_the_rest_stands(
    serve: Callable[[Answer], Any], value: bytes, reason: str,
) -> None:
    _agent, port = await serve(scalars({POWER: value, ENERGY: integer(42)}))
    samples = by_point(await read_once(device(port)))
    assert samples["power_w"].quality is Quality.BAD and samples["power_w"].value is None
    assert reason in samples["power_w"].reason
    assert len(samples["power_w"].reason) < 200
    assert samples["energy_kwh"].quality is Quality.GOOD and samples["energy_kwh"].value == 42.0


async def test_a_64_bit_value_times_a_huge_scale_is_bad_not_infinite(serve: Callable[[Answer], Any]) -> None:
    # 2^63 - 1 is a fair Counter64; x 1e300 it is no finite float, and round(inf) would raise.
    _agent, port = await serve(scalars({POWER: integer(2**63 - 1), ENERGY: integer(42)}))
    huge = profile().model_copy(update={"points": [
        p.model_copy(update={"scale": 1e300}) if p.name == "power_w" else p for p in profile().points]})
    samples = by_point(await read_once(device(port), huge))
    assert samples["power_w"].quality is Quality.BAD
    assert "not a finite number" in samples["power_w"].reason


async def test_the_pysnmp_client_bounds_integers_too(serve: Callable[[Answer], Any]) -> None:
    # pyasn1 decodes INTEGERs of any size; the driver's own check stops them before the scaling.
    _agent, port = await serve(scalars({POWER: integer(2**80), ENERGY: integer(42)}))
    try:
        samples = by_point(await read_once(device(port, client="pysnmp", timeout=0.5)))
    except DriverError as err:
        # pysnmp may refuse the whole message (its Integer32 range): a DriverError, never anything else.
        assert str(err)
        return
    assert samples["power_w"].quality is Quality.BAD
    assert "bits" in samples["power_w"].reason
    assert samples["energy_kwh"].value == 42.0


def renamed(message: bytes, name: bytes) -> bytes:
    """The GET response `message` rebuilt with ENERGY's varbind name replaced by `name`."""
    request_id = fast.Codec().response(message)[0]
    return response(b"public", request_id, [bind(POWER, integer(1)), fast._tlv(0x30, name + integer(42))])


@pytest.mark.parametrize(("mangle", "reason"), [
    # The INTEGER's length claims more than the datagram holds.
    (lambda m: m.replace(raw_tlv(0x02, b"\x2a"), b"\x02\x7f\x2a"), "runs past"),
    # A length in five length bytes (more than a datagram can ever hold).
    (lambda m: m[:1] + b"\x85\x00\x00\x00\x00" + m[1:], "unsupported BER length"),
    # Truncated: half the message.
    (lambda m: m[: len(m) // 2], "runs past"),
    # A varbind name with an arc beyond 2^32 - 1 (the enclosing lengths are consistent).
    (lambda m: renamed(m, raw_tlv(0x06, fast.encode_oid(ENERGY)[2:-1] + b"\x9f\xff\xff\xff\x7f")),
     "beyond 2^32 - 1"),
    # A varbind whose name is not an OID at all.
    (lambda m: renamed(m, raw_tlv(0x04, b"name")), "not an OID"),
    # A varbind name of 300 arcs.
    (lambda m: renamed(m, raw_tlv(0x06, b"\x2b" + b"\x01" * 299)), "OID of 301 arcs"),
])
async def test_a_malformed_message_is_a_driver_error(
    serve: Callable[[Answer], Any], mangle: Callable[[bytes], bytes], reason: str,
) -> None:
    good = scalars({POWER: integer(1), ENERGY: integer(42)})

    def answer(request: Request) -> bytes | None:
        reply = good(request)
        return mangle(reply) if reply is not None and request.tag == fast.GET else reply

    _agent, port = await serve(answer)
    with pytest.raises(DriverError) as caught:
        await read_once(device(port, timeout=0.5))
    # The codec's own reason when the request-id could be read; a reply it cannot match is no answer at all.
    assert reason in str(caught.value) or "no answer" in str(caught.value)


def test_codec_rejects_absurd_sizes_directly() -> None:
    codec = fast.Codec()
    reply = response(b"public", 7, [bind(POWER, integer(1))])
    assert codec.response(reply)[0] == 7
    with pytest.raises(ValueError, match="runs past"):
        codec.response(reply[:-1])
    with pytest.raises(ValueError, match="INTEGER field"):
        codec.response(reply.replace(integer(7), raw_tlv(0x02, b"\x01" * 9)))
    with pytest.raises(ValueError, match="arcs"):
        fast.decode_oid(b"\x2b" + b"\x01" * 200)
    with pytest.raises(ValueError, match="truncated"):
        fast.decode_oid(b"\x2b\x81")


# ---- points the agent does not have ---------------------------------------------------------------------------

async def test_an_absent_point_is_bad_every_poll_and_logged_once(serve: Callable[[Answer], Any]) -> None:
    # POWER answers noSuchObject; the outlet column walks straight to endOfMibView (no rows).
    _agent, port = await serve(scalars({ENERGY: integer(42)}))
    driver = SnmpDriver(device(port), profile(), DriverContext())
    try:
        with capture_logs() as logs:
            polls = [by_point(await driver.read()) for _ in range(3)]
    finally:
        await driver.close()
    for samples in polls:
        assert samples["power_w"].quality is Quality.BAD
        assert samples["power_w"].reason == "noSuchObject: the agent has no " + ".".join(map(str, POWER))
        assert samples["current_a"].quality is Quality.BAD
        assert samples["current_a"].reason.startswith("no rows under " + ".".join(map(str, OUTLETS)))
        assert samples["energy_kwh"].value == 42.0
    warned = [e for e in logs if e["event"] == "snmp point not on the device"]
    assert sorted(e["point"] for e in warned) == ["current_a", "power_w"]


# ---- a table walk that never ends ---------------------------------------------------------------------------

def endless(cursor: Oid) -> list[bytes]:
    """Each GETBULK gets the next 25 rows after the cursor, forever."""
    start = cursor[len(OUTLETS)] if len(cursor) > len(OUTLETS) else 0
    return [bind((*OUTLETS, n), integer(n % 100)) for n in range(start + 1, start + 26)]


async def test_an_endless_walk_stops_at_max_walk_rows(serve: Callable[[Answer], Any]) -> None:
    agent, port = await serve(scalars({POWER: integer(1), ENERGY: integer(42)}, table=endless))
    samples = await read_once(device(port, max_walk_rows=600))
    current = [s for s in samples if s.point == "current_a"]
    assert len(current) == 1 and current[0].quality is Quality.BAD and not current[0].tags
    assert current[0].reason == "walk stopped at max_walk_rows (600 rows)"
    assert by_point(samples)["energy_kwh"].value == 42.0
    assert agent.seen[fast.GETBULK] == 24  # 600 rows / 25 a request: not one request more


async def test_an_endless_walk_stops_at_walk_timeout(serve: Callable[[Answer], Any]) -> None:
    _agent, port = await serve(scalars({POWER: integer(1), ENERGY: integer(42)}, table=endless))
    # No row limit to speak of: only the walk's own time limit stops it (well inside the poll deadline).
    samples = await read_once(device(port, max_walk_rows=1_000_000, walk_timeout=0.3, deadline=60.0))
    current = [s for s in samples if s.point == "current_a"]
    assert len(current) == 1 and current[0].quality is Quality.BAD
    assert "walk_timeout of 0.3s passed" in current[0].reason


async def test_caches_stay_bounded_under_an_endless_walk(serve: Callable[[Answer], Any]) -> None:
    _agent, port = await serve(scalars({POWER: integer(1), ENERGY: integer(42)}, table=endless))
    context = DriverContext()
    driver = SnmpDriver(device(port, max_walk_rows=400), profile(), context)
    before = fast.CACHE_EVICTIONS.get(cache="oid_bytes")
    try:
        await driver.read()
        endpoint = context.shared["snmp_fast_endpoint"]
        endpoint.codec = fast.Codec(cache_size=10)  # a small bound, to see it hold without 50,000 rows
        for _ in range(3):
            await driver.read()
            assert max(endpoint.codec.cache_sizes()) <= 10
    finally:
        await driver.close()
    assert fast.CACHE_EVICTIONS.get(cache="oid_bytes") > before


def test_bounded_cache_drops_the_oldest_and_counts() -> None:
    cache: fast.BoundedCache[int, str] = fast.BoundedCache("test", 3)
    for n in range(10):
        cache.put(n, str(n))
    assert len(cache) == 3
    assert cache.get(0) is None and cache.get(9) == "9"
    cache.put(9, "again")  # an existing key evicts nothing
    assert len(cache) == 3 and cache.get(7) == "7"


# ---- writes need a write community ----------------------------------------------------------------------------

@pytest.mark.parametrize("client", ["builtin", "pysnmp"])
async def test_no_write_community_no_set_on_the_wire(serve: Callable[[Answer], Any], client: str) -> None:
    agent, port = await serve(scalars({}))
    driver = SnmpDriver(device(port, client=client, community="public"), profile(), DriverContext())
    try:
        with pytest.raises(WriteRejected, match="no write_community configured"):
            await driver.write("outlet_command:3", "off")
    finally:
        await driver.close()
    assert agent.seen.get(fast.SET, 0) == 0 and agent.communities == []


@pytest.mark.parametrize("client", ["builtin", "pysnmp"])
async def test_a_set_goes_with_the_write_community_only(serve: Callable[[Answer], Any], client: str) -> None:
    def answer(request: Request) -> bytes:
        return response(request.community, request.request_id, [bind(oid, integer(2)) for oid in request.oids])

    agent, port = await serve(answer)
    driver = SnmpDriver(device(port, client=client, community="public", write_community="private"), profile(),
                        DriverContext())
    try:
        await driver.write("outlet_command:3", "off")
    finally:
        await driver.close()
    assert agent.seen == {fast.SET: 1} and agent.communities == [b"private"]


def test_the_codec_session_refuses_a_set_without_write_community() -> None:
    session = fast.FastSession(device(161), DriverContext())
    with pytest.raises(WriteRejected):
        asyncio.run(session.set((*SWITCH, 1), 2, "Integer32"))


# ---- SNMPv3 context names --------------------------------------------------------------------------------------

class _OneValue:
    """pysnmp MIB instrumentation answering 7 for POWER and 42 for ENERGY (and nothing else)."""

    def read_variables(self, *var_binds: tuple[Any, Any], **_: Any) -> list[tuple[Any, Any]]:
        values = {POWER: rfc1902.Integer32(7), ENERGY: rfc1902.Integer32(42)}
        return [(name, values.get(tuple(name), rfc1905.noSuchInstance)) for name, _v in var_binds]

    def read_next_variables(self, *var_binds: tuple[Any, Any], **_: Any) -> list[tuple[Any, Any]]:
        return [(name, rfc1905.endOfMibView) for name, _v in var_binds]


@pytest.fixture
async def context_agent() -> AsyncIterator[int]:
    """A pysnmp v3 agent (user `ctx`, noAuthNoPriv) that serves its objects only in context `pdu-2`."""
    engine = snmp_engine.SnmpEngine()
    transport = udp.UdpAsyncioTransport().open_server_mode(("127.0.0.1", 0))
    snmp_config.add_transport(engine, udp.DOMAIN_NAME, transport)
    await transport._lport  # bound: the port is there before anyone sends to it
    port: int = transport.transport.get_extra_info("sockname")[1]
    snmp_config.add_v3_user(engine, "ctx")
    contexts = snmp_context.SnmpContext(engine)
    contexts.unregister_context_name(b"")
    contexts.register_context_name(b"pdu-2", _OneValue())
    cmdrsp.GetCommandResponder(engine, contexts)
    cmdrsp.BulkCommandResponder(engine, contexts)
    try:
        yield port
    finally:
        engine.close_dispatcher()


@pytest.mark.parametrize("client", ["builtin", "pysnmp"])
async def test_v3_context_name_is_sent(context_agent: int, client: str) -> None:
    base = {"version": "3", "user": "ctx", "client": client, "timeout": 0.5, "retries": 0}
    only_scalars = Profile[Point](name="hostile", kind="pdu", protocol="snmp", points=[
        p for p in profile().points if not p.is_column])
    samples = by_point(await read_once(device(context_agent, **base, context="pdu-2"), only_scalars))
    assert samples["power_w"].value == 0.7 and samples["energy_kwh"].value == 42.0
    # The same agent without the context: nothing it serves (the request is refused or dropped).
    with pytest.raises(DriverError):
        await read_once(device(context_agent, **base), only_scalars)


async def test_a_bad_response_is_never_another_exception(serve: Callable[[Answer], Any]) -> None:
    """Random bytes in answer to every request: a DriverError (no answer), never an unexpected exception."""
    seed = bytearray(range(256)) * 4

    def answer(request: Request) -> bytes:
        good = response(request.community, request.request_id, [bind(oid, integer(1)) for oid in request.oids])
        # Keep the header (so the request-id matches) and replace the rest with junk.
        cut = good.index(fast._tlv(0x30, b"".join(bind(oid, integer(1)) for oid in request.oids)))
        return good[:cut] + bytes(seed[: len(good) - cut])

    _agent, port = await serve(answer)
    with pytest.raises(BadResponse):
        await read_once(device(port, timeout=0.5))
