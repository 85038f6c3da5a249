"""SNMP agents for simulated PDUs: one UDP endpoint per PDU, values from the plant.

    async with SnmpSimulator(plant, devices) as sim:   # every device listens on its host:port
        ...                                            # snmpget/snmpwalk/snmpset or the driver talk to it

A PDU's tree is the one its profile describes: every point's instance OIDs (a column's rows come from
`plant.rows(device, index_tag)`), the decimal-digits objects of Raritan sensors, and the outlet command
objects. It is computed from the plant and kept for `refresh` seconds (a SET drops it at once), sorted, so
GET / GETNEXT / GETBULK are a dictionary look-up and a bisection. A v1/v2c PDU is answered by a lean agent of
its own (`_CommunityAgent`: the driver's BER codec, values encoded once per table); v3 PDUs share one pysnmp
engine (USM, keys, ciphers), whose MIB tree `_Instrumentation` replaces, as it would cost far more per request.

Requests reach the device by the transport they arrived on: each PDU's endpoint is registered under its own
transport domain (udpDomain + (n,)). Who may read and write is checked here, per device: its read and write
communities, or its v3 user (authPriv or authNoPriv as configured). A PDU with the plant's `no_response` fault
does not answer at all.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pysnmp import error as snmp_error
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config as snmp_config
from pysnmp.entity import engine as snmp_engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.smi import error as smi_error

from dcim.core.samples import Value
from dcim.drivers.profiles import Profile, load_profile
from dcim.drivers.snmp import fast as ber
from dcim.drivers.snmp.config import SnmpDevice
from dcim.drivers.snmp.points import Point
from dcim.drivers.snmp.usm import auth_protocol, priv_protocol
from dcim.simulators.plant import Plant

log = structlog.get_logger(__name__)

Oid = tuple[int, ...]
# A GETBULK answer holds at most this many varbinds (pysnmp's default is 64). Real agents cap by message
# size instead; 256 small INTEGERs stay well under one Ethernet jumbo frame's worth of UDP.
MAX_BULK_VARBINDS = 256

SYNTAX: dict[str, Any] = {
    "Integer32": rfc1902.Integer32,
    "Unsigned32": rfc1902.Unsigned32,
    "Gauge32": rfc1902.Gauge32,
    "Counter32": rfc1902.Counter32,
}


@functools.lru_cache(maxsize=65536)
def _typed(syntax: str, raw: int) -> Any:
    # pyasn1 values are immutable and costly to build (constraint checks): share them.
    return SYNTAX[syntax](raw)


# BER tags of the syntaxes the profiles use (Unsigned32 and Gauge32 share one).
_TAGS = {"Integer32": 0x02, "Unsigned32": 0x42, "Gauge32": 0x42, "Counter32": 0x41}


@functools.lru_cache(maxsize=65536)
def _ber(syntax: str, raw: int) -> bytes:
    tag = _TAGS[syntax]
    return ber.integer(tag, raw) if tag == 0x02 else ber.unsigned(tag, raw)


class _BulkResponder(cmdrsp.BulkCommandResponder):  # type: ignore[misc]
    max_varbinds = MAX_BULK_VARBINDS


def encode(point: Point, value: Value, digits: int | None) -> int | None:
    """A canonical value as the raw integer the agent serves (the inverse of the driver's decoding)."""
    if point.enum is not None:
        try:
            raw: int = point.raw_for(str(value))
            return raw
        except KeyError:
            return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return None
    raw = round(float(value) / point.scale * 10 ** (digits or 0))
    if point.syntax != "Integer32" and raw < 0:
        return None
    return raw


@dataclass
class _Tree:
    """One PDU's sorted OID table, and where its writable objects are."""

    oids: list[Oid] = field(default_factory=list)
    values: dict[Oid, Any] = field(default_factory=dict)
    # `values` as pysnmp objects (v3 PDUs only) and as BER TLVs (every PDU), by OID.
    encoded: dict[Oid, bytes] = field(default_factory=dict)
    built: float = -1.0
    request: object = None


class PduAgent:
    """The view of one PDU: its configuration, profile and OID table."""

    def __init__(self, plant: Plant, device: SnmpDevice, profile: Profile[Point], refresh: float) -> None:
        self.plant = plant
        self.device = device
        self.profile = profile
        self.refresh = refresh
        self.readers: set[str] = set()
        self.writers: set[str] = set()
        self._tree = _Tree()
        self._writable = [p for p in profile.points if p.writable is not False]

    def tree(self, request: object = None) -> _Tree:
        """The table, rebuilt when older than `refresh`; never twice for one request (a GETBULK asks for
        the next OIDs once per repetition)."""
        now = time.monotonic()
        current = self._tree
        if current.built < 0 or (now - current.built >= self.refresh and current.request is not request):
            current = self._tree = self._build()
            current.built = now
        current.request = request
        return current

    def invalidate(self) -> None:
        self._tree.built = -1.0

    def _rows(self, table: str) -> dict[int, dict[str, Value]]:
        return self.plant.rows(self.device.id, table)

    def _build(self) -> _Tree:
        device_values = self.plant.values(self.device.id)
        tables: dict[str, dict[int, dict[str, Value]]] = {}
        # pysnmp's typed values only for a v3 PDU (served by pysnmp's engine); BER for every one.
        typed = self.device.version == "3"
        values: dict[Oid, Any] = {}
        encoded: dict[Oid, bytes] = {}
        for point in self.profile.points:
            syntax = point.syntax
            if point.is_column:
                assert point.index_tag is not None
                rows = tables.setdefault(point.index_tag, self._rows(point.index_tag))
                for n, row in rows.items():
                    # A command object reads back as the outlet's state (APC does this).
                    name = "state" if point.writable is not False and point.enum else point.name
                    self._put(values, encoded, point, syntax, row.get(name), (n,), typed=typed)
            elif point.tags:
                key, text = next(iter(point.tags.items()))
                rows = tables.setdefault(key, self._rows(key))
                self._put(values, encoded, point, syntax, rows.get(int(text), {}).get(point.name), (), typed=typed)
            else:
                self._put(values, encoded, point, syntax, device_values.get(point.name), (), typed=typed)
        tree = _Tree(values=values, encoded=encoded)
        tree.oids = sorted(encoded)
        return tree

    @staticmethod
    def _put(values: dict[Oid, Any], encoded: dict[Oid, bytes], point: Point, syntax: str, value: Value | None,
             index: Oid, *, typed: bool) -> None:
        def put(oid: Oid, syntax: str, raw: int) -> None:
            if typed:
                values[oid] = _typed(syntax, raw)
            encoded[oid] = _ber(syntax, raw)

        digits_oid = point.digits_instance(index)
        if digits_oid is not None and point.digits is not None:
            put(digits_oid, "Unsigned32", point.digits)
        raw = None if value is None else encode(point, value, point.digits)
        state_oid = point.state_instance(index)
        if state_oid is not None:
            # A sensor that cannot measure: state "unavailable" and a value of 0, as Raritan serves it.
            put(state_oid, "Integer32", 4 if raw is not None else point.unavailable_states[0])
            raw = 0 if raw is None else raw
        if raw is None:
            # What the vendors serve for a feature the model lacks.
            if not point.missing:
                return
            raw = int(point.missing[0])
        put(point.instance(index), syntax, raw)

    def write(self, name: Oid, value: Any) -> None:
        """Apply one SET varbind; raise an SMI error (pysnmp turns it into the PDU's error-status)."""
        for point in self._writable:
            index = _match(point, name)
            if index is None:
                continue
            try:
                raw = int(value)
            except (TypeError, ValueError) as err:
                raise smi_error.WrongTypeError(name=name) from err
            if point.enum is not None:
                command = point.enum.get(raw)
                if command is None:
                    raise smi_error.WrongValueError(name=name)
                if point.index_tag == "outlet" and index:
                    self._outlet(index[0], command, name)
                    return
                self.plant.write(self.device.id, point.name, command)
                return
            self.plant.write(self.device.id, point.name, raw * point.scale)
            return
        raise smi_error.NotWritableError(name=name)

    def _outlet(self, outlet: int, command: str, name: Oid) -> None:
        try:
            if command in ("on", "delayed_on"):
                self.plant.switch_outlet(self.device.id, outlet, True)
            elif command in ("off", "delayed_off"):
                self.plant.switch_outlet(self.device.id, outlet, False)
            elif command in ("cycle", "delayed_cycle"):
                # Off and on again: the load comes back, as after a real power cycle.
                self.plant.switch_outlet(self.device.id, outlet, False)
                self.plant.switch_outlet(self.device.id, outlet, True)
        except KeyError as err:
            raise smi_error.NoSuchInstanceError(name=name) from err


def _match(point: Point, name: Oid) -> Oid | None:
    if not point.is_column:
        return () if point.instance() == name else None
    prefix, suffix = point.split()
    if len(name) <= len(prefix) + len(suffix) or name[: len(prefix)] != prefix:
        return None
    if suffix and name[-len(suffix):] != suffix:
        return None
    return name[len(prefix): len(name) - len(suffix)]


class _Drop(snmp_error.PySnmpError):  # type: ignore[misc]
    """Raised to make pysnmp's responder send nothing (pysnmp logs a PySnmpError and drops the request)."""


class _Instrumentation:
    """pysnmp's MIB instrumentation interface over the PDUs' OID tables."""

    def __init__(self, engine: snmp_engine.SnmpEngine, agents: dict[Oid, PduAgent]) -> None:
        self.engine = engine
        self.agents = agents  # transport domain -> agent

    def _agent(self, write: bool) -> tuple[PduAgent, object]:
        ctx = self.engine.observer.get_execution_context("rfc3412.receiveMessage:request")
        agent = self.agents.get(tuple(ctx["transportDomain"]))
        if agent is None or not agent.plant.answering(agent.device.id):
            raise _Drop("not answering")
        name = str(ctx["securityName"])
        if name not in (agent.writers if write else agent.readers | agent.writers):
            if write and name in agent.readers:
                raise smi_error.NoAccessError(idx=0)
            raise _Drop(f"unknown security name {name}")
        return agent, ctx["pdu"]

    def read_variables(self, *var_binds: tuple[Any, Any], **_: Any) -> list[tuple[Any, Any]]:
        agent, request = self._agent(write=False)
        tree = agent.tree(request)
        return [(name, tree.values.get(tuple(name), rfc1905.noSuchInstance)) for name, _v in var_binds]

    def read_next_variables(self, *var_binds: tuple[Any, Any], **_: Any) -> list[tuple[Any, Any]]:
        agent, request = self._agent(write=False)
        tree = agent.tree(request)
        out: list[tuple[Any, Any]] = []
        for name, _v in var_binds:
            at = bisect.bisect_right(tree.oids, tuple(name))
            if at < len(tree.oids):
                oid = tree.oids[at]
                out.append((rfc1902.ObjectName(oid), tree.values[oid]))
            else:
                out.append((name, rfc1905.endOfMibView))
        return out

    def write_variables(self, *var_binds: tuple[Any, Any], **_: Any) -> list[tuple[Any, Any]]:
        agent, _request = self._agent(write=True)
        for idx, (name, value) in enumerate(var_binds):
            try:
                agent.write(tuple(name), value)
            except smi_error.MibOperationError as err:
                err.update({"idx": idx})
                raise
        agent.invalidate()
        return list(var_binds)


# SNMPv2 error-status values (RFC 3416) and what a v1 agent answers for each instead (RFC 2576, 4.3).
NO_ERROR, NO_SUCH_NAME, BAD_VALUE, GEN_ERR, NO_ACCESS, WRONG_TYPE, WRONG_VALUE, NO_CREATION, NOT_WRITABLE = (
    0, 2, 3, 5, 6, 7, 10, 11, 17)
_V1_STATUS = {NO_ACCESS: NO_SUCH_NAME, NOT_WRITABLE: NO_SUCH_NAME, NO_CREATION: NO_SUCH_NAME,
              WRONG_TYPE: BAD_VALUE, WRONG_VALUE: BAD_VALUE}
_SET_ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (smi_error.WrongTypeError, WRONG_TYPE), (smi_error.WrongValueError, WRONG_VALUE),
    (smi_error.NoSuchInstanceError, NO_CREATION), (smi_error.NotWritableError, NOT_WRITABLE),
    (smi_error.NoAccessError, NO_ACCESS))
_NO_SUCH_INSTANCE, _END_OF_MIB_VIEW = b"\x81\x00", b"\x82\x00"


class _CommunityAgent(asyncio.DatagramProtocol):
    """One v1/v2c PDU's agent without pysnmp: the request decoded and the response encoded with the driver's
    BER codec, the values already encoded in the PDU's table. pysnmp's engine spends milliseconds of pyasn1
    per request, and in `dcim demo` (one process: the simulated hall, the broker and the daemon) it was what
    made the PDUs miss their poll deadlines on a busy machine. v3 PDUs stay on pysnmp (USM, keys, ciphers).

    Answers GET, GETNEXT, GETBULK (v2c) and SET as the pysnmp agent did: a wrong community gets no answer, the
    read community may not SET (noAccess), a table's end is endOfMibView (v2c) or noSuchName (v1)."""

    def __init__(self, agent: PduAgent) -> None:
        self.agent = agent
        device = agent.device
        self.read = {device.community.encode()}
        self.write = {device.write_community.encode()} if device.write_community else set()
        self.codec = ber.Codec()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            reply = self.answer(data)
        except ValueError:
            return  # not a message we understand: no answer, as pysnmp drops it
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def answer(self, data: bytes) -> bytes | None:
        tag, at, end = ber.header(data, 0)
        if tag != 0x30:
            raise ValueError("not an SNMP message")
        _t, s, at = ber.header(data, at, end)
        version = ber.small_int(data, s, at)
        _t, s, at = ber.header(data, at, end)
        community = data[s:at]
        pdu_tag, request_id, a, b, binds = self.codec.pdu(data, at, end)
        agent = self.agent
        if version not in (0, 1) or (pdu_tag == ber.GETBULK and version == 0):
            return None
        if community not in self.read and community not in self.write:
            return None
        if not agent.plant.answering(agent.device.id):
            return None
        if pdu_tag == ber.SET:
            status, index = self._set(binds, community in self.write)
            out = [(oid, self._echo(value)) for oid, value in binds]
        elif pdu_tag in (ber.GET, ber.GETNEXT, ber.GETBULK):
            status, index, out = self._read(pdu_tag, binds, a, b, version)
        else:
            return None
        if version == 0 and status:
            status = _V1_STATUS.get(status, GEN_ERR if status > BAD_VALUE + 2 else status)
        if status:
            out = [(oid, self._echo(value)) for oid, value in binds]  # an error echoes the request's varbinds
        return self.codec.request(version, community, ber.RESPONSE, request_id, status, index, out)

    @staticmethod
    def _echo(value: Any) -> bytes:
        if isinstance(value, int) and not isinstance(value, bool):
            return ber.integer(0x02, value)
        if isinstance(value, bytes):
            return ber.tlv(0x04, value)
        return b"\x05\x00"

    def _read(self, pdu_tag: int, binds: list[tuple[Oid, Any]], a: int, b: int,
              version: int) -> tuple[int, int, list[tuple[Oid, bytes]]]:
        tree = self.agent.tree(object())
        encoded, oids = tree.encoded, tree.oids
        out: list[tuple[Oid, bytes]] = []

        def following(oid: Oid) -> tuple[Oid, bytes]:
            at = bisect.bisect_right(oids, oid)
            return (oids[at], encoded[oids[at]]) if at < len(oids) else (oid, _END_OF_MIB_VIEW)

        if pdu_tag == ber.GET:
            out = [(oid, encoded.get(oid, _NO_SUCH_INSTANCE)) for oid, _v in binds]
        elif pdu_tag == ber.GETNEXT:
            out = [following(oid) for oid, _v in binds]
        else:  # GETBULK: the non-repeaters once, then the repeaters row by row (RFC 3416, 4.2.3)
            fixed = min(max(a, 0), len(binds))
            out = [following(oid) for oid, _v in binds[:fixed]]
            last = [oid for oid, _v in binds[fixed:]]
            for _ in range(max(b, 0)):
                if not last or len(out) + len(last) > MAX_BULK_VARBINDS:
                    break
                row = [following(oid) for oid in last]
                out += row
                if all(value == _END_OF_MIB_VIEW for _oid, value in row):
                    break
                last = [oid for oid, _value in row]
        if version == 0:
            for n, (_oid, value) in enumerate(out, start=1):
                if value in (_NO_SUCH_INSTANCE, _END_OF_MIB_VIEW):
                    return NO_SUCH_NAME, n, out
        return NO_ERROR, 0, out

    def _set(self, binds: list[tuple[Oid, Any]], may_write: bool) -> tuple[int, int]:
        if not may_write:
            return NO_ACCESS, 1
        agent = self.agent
        try:
            for n, (oid, value) in enumerate(binds, start=1):
                if not isinstance(value, int) or isinstance(value, bool):
                    return WRONG_TYPE, n
                try:
                    agent.write(oid, value)
                except smi_error.MibOperationError as err:
                    status = next((code for kind, code in _SET_ERRORS if isinstance(err, kind)), GEN_ERR)
                    return status, n
        finally:
            agent.invalidate()
        return NO_ERROR, 0


class SnmpSimulator:
    """The agents of many PDUs: v1/v2c PDUs each on a lean agent of their own (`_CommunityAgent`), v3 PDUs in
    one pysnmp engine. Use as an async context manager."""

    def __init__(self, plant: Plant, devices: Sequence[SnmpDevice], *, refresh: float = 0.25,
                 profile_dirs: tuple[Any, ...] = ()) -> None:
        self.plant = plant
        self.devices = list(devices)
        self.refresh = refresh
        self.profile_dirs = profile_dirs
        self.engine: snmp_engine.SnmpEngine | None = None
        self.agents: dict[str, PduAgent] = {}
        self._transports: list[asyncio.BaseTransport] = []

    async def __aenter__(self) -> SnmpSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def start(self) -> None:
        addresses: dict[tuple[str, int], str] = {}
        for device in self.devices:
            where = (device.host, device.port)
            if where in addresses:
                raise ValueError(f"{device.id} and {addresses[where]} both listen on {where[0]}:{where[1]}")
            addresses[where] = device.id
        loop = asyncio.get_running_loop()
        v3 = [d for d in self.devices if d.version == "3"]
        engine = snmp_engine.SnmpEngine() if v3 else None
        self.engine = engine
        users: dict[str, tuple[str, str, str, str, str]] = {}
        by_domain: dict[Oid, PduAgent] = {}
        try:
            for n, device in enumerate(self.devices, start=1):
                profile: Profile[Point] = load_profile(device.profile, self.profile_dirs)
                agent = PduAgent(self.plant, device, profile, self.refresh)
                # A socket handed over through the plant is served as it is: its port was never free.
                held = self.plant.sockets.pop(device.id, None)
                if device.version != "3":
                    # Bound here, so a port in use fails here and a started simulator is listening.
                    factory = functools.partial(_CommunityAgent, agent)
                    if held is not None:
                        endpoint, _ = await loop.create_datagram_endpoint(factory, sock=held)
                    else:
                        endpoint, _ = await loop.create_datagram_endpoint(
                            factory, local_addr=(device.host, device.port))
                    self._transports.append(endpoint)
                    self.agents[device.id] = agent
                    continue
                assert engine is not None and device.user is not None
                agent.writers.add(self._user(engine, users, device))
                domain = (*udp.DOMAIN_NAME, n)
                transport = (udp.UdpAsyncioTransport().open_server_mode(sock=held) if held is not None
                             else udp.UdpAsyncioTransport().open_server_mode((device.host, device.port)))
                snmp_config.add_transport(engine, domain, transport)
                await transport._lport
                by_domain[domain] = agent
                self.agents[device.id] = agent
        except BaseException:
            self.close()
            raise
        if engine is not None:
            snmp_context = context.SnmpContext(engine)
            snmp_context.unregister_context_name(b"")
            snmp_context.register_context_name(b"", _Instrumentation(engine, by_domain))
            cmdrsp.GetCommandResponder(engine, snmp_context)
            cmdrsp.NextCommandResponder(engine, snmp_context)
            _BulkResponder(engine, snmp_context)
            cmdrsp.SetCommandResponder(engine, snmp_context)
        log.info("snmp simulator listening", devices=len(self.devices), v3=len(v3))

    @staticmethod
    def _user(engine: snmp_engine.SnmpEngine, known: dict[str, tuple[str, str, str, str, str]],
              device: SnmpDevice) -> str:
        assert device.user is not None
        auth_key = device.auth_key.get_secret_value() if device.auth_key else ""
        priv_key = device.priv_key.get_secret_value() if device.priv_key else ""
        spec = (device.auth_protocol, auth_key, device.priv_protocol, priv_key, device.id)
        if device.user in known:
            if known[device.user][:4] != spec[:4]:
                raise ValueError(f"{device.id}: v3 user {device.user!r} has other keys on {known[device.user][4]}; "
                                 "one simulator serves one set of keys per user name")
            return device.user
        snmp_config.add_v3_user(
            engine, device.user,
            auth_protocol(device.auth_protocol), auth_key or None,
            priv_protocol(device.priv_protocol), priv_key or None,
        )
        known[device.user] = spec
        return device.user

    def close(self) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        if self.engine is not None and self.engine.transport_dispatcher is not None:
            self.engine.close_dispatcher()
        self.engine = None


async def serve(plant: Plant, devices: list[SnmpDevice], *, refresh: float = 0.25,
                profile_dirs: tuple[Any, ...] = (), ready: asyncio.Event | None = None) -> None:
    """Serve every given PDU on its configured host:port until cancelled (profiles from `profile_dirs` too).
    `ready` is set once every agent's UDP socket is bound (`start` awaits each bind)."""
    async with SnmpSimulator(plant, devices, refresh=refresh, profile_dirs=tuple(profile_dirs)):
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
