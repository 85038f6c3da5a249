"""One agent's SNMP requests over the process's shared pysnmp engine: GET, GETNEXT, GETBULK, SET.

Everything a request needs that does not change is built once per agent: the engine's target (address,
timeout, retries, security parameters) and the USM user or community, so a request is one PDU through the
engine and nothing else: no MIB look-ups (numeric OIDs in, `ObjectName`s and raw values out), no per-request
configuration. pysnmp's timeouts and retries run on its own timer; `DriverError`s come out, never pysnmp's
error indications.

Engines: one per process (kept in `DriverContext.shared`), except that a USM user name can carry one set of
keys per engine, so an agent whose user has the same name but other keys than another's gets a second engine.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config as snmp_config
from pysnmp.entity import engine as snmp_engine
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.proto import errind, rfc1902
from pysnmp.proto.api import v2c

from dcim.drivers.base import DriverContext
from dcim.drivers.errors import AuthError, BadResponse, DeviceTimeout, DeviceUnreachable, DriverError, WriteRejected
from dcim.drivers.snmp.config import SnmpDevice
from dcim.drivers.snmp.fast import OID_CACHE, BoundedCache
from dcim.drivers.snmp.status import status_error
from dcim.drivers.snmp.usm import auth_protocol, priv_protocol

Oid = tuple[int, ...]
VarBind = tuple[Oid, Any]

_NULL = v2c.Null("")
_NAMES = itertools.count(1)
# pysnmp checks timeouts on each tick of its timer; the default 0.5 s would make a 1 s timeout up to 1.5 s.
TIMER_RESOLUTION = 0.1

# Error indications that mean the credentials or security level were refused.
_AUTH_ERRORS = (
    errind.UnknownUserName, errind.WrongDigest, errind.DecryptionError, errind.UnsupportedSecurityLevel,
    errind.AuthenticationError, errind.AuthenticationFailure, errind.UnknownSecurityName,
)
# SET error statuses that mean "you may not", not "the device is confused".


class _Engines:
    """The shared engines of a process, the USM users each one holds and how many sessions use it.
    An engine whose last session closes is closed too (its timer task and socket go with it)."""

    def __init__(self) -> None:
        self.engines: list[tuple[snmp_engine.SnmpEngine, dict[str, tuple[Any, ...]]]] = []
        self.users: dict[int, int] = {}

    def pick(self, user: str | None, keys: tuple[Any, ...]) -> snmp_engine.SnmpEngine:
        for engine, users in self.engines:
            if user is None or users.get(user, keys) == keys:
                if user is not None:
                    users[user] = keys
                self.users[id(engine)] += 1
                return engine
        engine = snmp_engine.SnmpEngine()
        snmp_config.add_transport(engine, udp.DOMAIN_NAME, udp.UdpAsyncioTransport().open_client_mode())
        engine.transport_dispatcher.set_timer_resolution(TIMER_RESOLUTION)
        self.engines.append((engine, {user: keys} if user is not None else {}))
        self.users[id(engine)] = 1
        return engine

    def release(self, engine: snmp_engine.SnmpEngine) -> None:
        self.users[id(engine)] -= 1
        if self.users[id(engine)] > 0:
            return
        del self.users[id(engine)]
        self.engines = [(e, u) for e, u in self.engines if e is not engine]
        if engine.transport_dispatcher is not None:
            engine.close_dispatcher()


def engines(context: DriverContext) -> _Engines:
    found = context.shared.get("snmp_engines")
    if not isinstance(found, _Engines):
        found = context.shared["snmp_engines"] = _Engines()
    return found


class Session:
    """Requests to one agent. Not safe for concurrent use by two polls (the driver serialises them)."""

    def __init__(self, device: SnmpDevice, context: DriverContext) -> None:
        self.device = device
        n = next(_NAMES)
        self._engines = engines(context)
        self._target = f"dcim-t{n}"
        self._params = f"dcim-p{n}"
        self._v1 = device.version == "1"
        if device.version == "3":
            assert device.user is not None
            auth = device.auth_key.get_secret_value() if device.auth_key else None
            priv = device.priv_key.get_secret_value() if device.priv_key else None
            keys = (device.auth_protocol, auth, device.priv_protocol, priv)
            self.engine = self._engines.pick(device.user, keys)
            snmp_config.add_v3_user(self.engine, device.user, auth_protocol(device.auth_protocol), auth,
                                    priv_protocol(device.priv_protocol), priv)
            level = "authPriv" if device.priv_protocol != "none" else (
                "authNoPriv" if device.auth_protocol != "none" else "noAuthNoPriv")
            snmp_config.add_target_parameters(self.engine, self._params, device.user, level, 3)
            self._write_params = self._params
        else:
            self.engine = self._engines.pick(None, ())
            model = 0 if self._v1 else 1
            read_name = self._community(device.community)
            snmp_config.add_target_parameters(self.engine, self._params, read_name, "noAuthNoPriv", model)
            self._write_params = self._params
            if device.write_community and device.write_community != device.community:
                self._write_params = f"dcim-pw{n}"
                snmp_config.add_target_parameters(self.engine, self._write_params,
                                                  self._community(device.write_community), "noAuthNoPriv", model)
        # pysnmp counts timeouts in hundredths of a second.
        snmp_config.add_target_address(self.engine, self._target, udp.DOMAIN_NAME, (device.host, device.port),
                                       self._params, timeout=device.timeout * 100, retryCount=device.retries)
        self._write_target = self._target
        if self._write_params != self._params:
            self._write_target = f"dcim-tw{n}"
            snmp_config.add_target_address(self.engine, self._write_target, udp.DOMAIN_NAME,
                                           (device.host, device.port), self._write_params,
                                           timeout=device.timeout * 100, retryCount=device.retries)
        self._get = cmdgen.GetCommandGenerator()
        self._next = cmdgen.NextCommandGeneratorSingleRun()
        self._bulk = cmdgen.BulkCommandGeneratorSingleRun()
        self._set = cmdgen.SetCommandGenerator()
        # Bounded: an endless walk brings a new cursor OID with every request.
        self._names: BoundedCache[Oid, Any] = BoundedCache("pysnmp_names", OID_CACHE)
        # SNMPv3 context name (pysnmp's `contextName`); v1/v2c have none.
        self._context = device.context if device.version == "3" else ""

    def _community(self, community: str) -> str:
        # One community entry per string and engine; its security name is derived from the string so two
        # agents with the same community share it.
        name = f"dcim-c{abs(hash(community)) % 10**12}"
        snmp_config.add_v1_system(self.engine, name, community, securityName=name)
        return name

    @property
    def where(self) -> str:
        return f"{self.device.id} ({self.device.host}:{self.device.port})"

    def _name(self, oid: Oid) -> Any:
        # OIDs repeat every poll: keep their ObjectNames instead of building them again.
        name = self._names.get(oid)
        if name is None:
            name = self._names.put(oid, rfc1902.ObjectName(oid))
        return name

    async def _request(self, send: Any, *args: Any) -> list[VarBind]:
        future: asyncio.Future[list[VarBind]] = asyncio.get_running_loop().create_future()

        def done(_engine: Any, _handle: Any, indication: Any, status: Any, index: Any, var_binds: Any,
                 _ctx: Any) -> None:
            if future.cancelled():
                return
            if indication:
                future.set_exception(self._error(indication))
            elif status and int(status) != 0:
                future.set_exception(self._status(status, index, var_binds))
            else:
                future.set_result([(tuple(name), value) for name, value in var_binds])

        send(self.engine, *args, done, None)
        return await future

    def _error(self, indication: Any) -> DriverError:
        if isinstance(indication, errind.RequestTimedOut):
            tries = self.device.retries + 1
            return DeviceTimeout(f"{self.where}: no answer after {tries} tr{'y' if tries == 1 else 'ies'} "
                                 f"of {self.device.timeout:g}s")
        if isinstance(indication, _AUTH_ERRORS):
            return AuthError(f"{self.where}: SNMPv3 security refused: {indication} "
                             "(check user, auth/priv protocols and keys)")
        if isinstance(indication, errind.UnknownEngineID | errind.NotInTimeWindow):
            return DeviceUnreachable(f"{self.where}: SNMPv3 engine discovery failed: {indication}")
        return BadResponse(f"{self.where}: {indication}")

    def _status(self, status: Any, index: Any, var_binds: Any) -> DriverError:
        text = status.prettyPrint() if hasattr(status, "prettyPrint") else str(status)
        return status_error(self.where, text, int(index), [tuple(vb[0]) for vb in var_binds])

    async def get(self, oids: Sequence[Oid]) -> list[VarBind]:
        var_binds = [(self._name(oid), _NULL) for oid in oids]
        return await self._request(self._get.send_varbinds, self._target, None, self._context, var_binds)

    async def next(self, oids: Sequence[Oid]) -> list[VarBind]:
        var_binds = [(self._name(oid), _NULL) for oid in oids]
        return await self._request(self._next.send_varbinds, self._target, None, self._context, var_binds)

    async def bulk(self, oids: Sequence[Oid], max_repetitions: int) -> list[VarBind]:
        """One GETBULK (GETNEXT on SNMPv1, which has no GETBULK): rows of `len(oids)` varbinds."""
        if self._v1:
            return await self.next(oids)
        var_binds = [(self._name(oid), _NULL) for oid in oids]
        return await self._request(self._bulk.send_varbinds, self._target, None, self._context, 0,
                                   max_repetitions, var_binds)

    async def set(self, oid: Oid, value: int, syntax: str) -> None:
        if not self.device.write_community and self.device.version != "3":
            raise WriteRejected(f"{self.where}: no write_community configured: SNMP writes are refused")
        typed = getattr(rfc1902, syntax)(value)
        await self._request(self._set.send_varbinds, self._write_target, None, self._context,
                            [(self._name(oid), typed)])

    def close(self) -> None:
        try:
            for target in {self._target, self._write_target}:
                snmp_config.delete_target_address(self.engine, target)
            for params in {self._params, self._write_params}:
                snmp_config.delete_target_parameters(self.engine, params)
        finally:
            self._engines.release(self.engine)
