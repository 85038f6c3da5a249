"""OPC UA simulator: one asyncua Server per chiller, its address space built from the device's profile.

    Objects/
      Chiller                      (ns = the profile's namespace URI, options.namespace)
        LeavingTemp   AnalogItemType, Double, EURange + EngineeringUnits (UNECE)
        Running       Boolean (writable)
        Status        Int32 (the profile's enum codes)
        ...

Values are pushed from `plant.values(device)` every `refresh` seconds (only those that changed, so a
subscription sees real changes); client writes go to `plant.write`. Faults, read on each refresh:
  trip, lockout     plant state, shows in status / alarm / running
  bad_node          {point: leaving_temp_c, status: BadSensorFailure}: the node's StatusCode turns Bad (an
                    Uncertain status, e.g. UncertainLastUsableValue, keeps the value)
  restart           {down: 0.5}: the server stops, stays down `down` seconds, starts again on the same
                    endpoint with its namespace indexes shifted by one (clients must resolve URIs again);
                    the fault clears itself
  no_response       the server is stopped until the fault is cleared
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509

from dcim.core.samples import Value
from dcim.drivers.opcua.config import OpcUaDevice
from dcim.drivers.opcua.nodes import UNECE, standard_node, string_node
from dcim.drivers.opcua.points import Point
from dcim.drivers.opcua.security import application_uri, is_trusted, load_certificates, load_trust_list
from dcim.drivers.profiles import Profile, WriteRange, load_profile
from dcim.simulators.plant import Plant

log = logging.getLogger(__name__)

UNITS_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"
# EURange of points without a writable range: what a chiller's sensors span.
EU_RANGES = {"degC": (-10.0, 60.0), "kW": (0.0, 5000.0), "%": (0.0, 100.0), "": (0.0, 10.0)}
PADDING_NAMESPACE = "urn:dcim:simulator:padding"


@dataclass(frozen=True)
class ServerSecurity:
    """Basic256Sha256 for the simulator. `trust_list` None accepts any client certificate."""

    certificate: Path
    private_key: Path
    trust_list: Path | None = None
    # username -> password; empty means anonymous sessions are allowed.
    users: dict[str, str] = field(default_factory=dict)
    allow_none: bool = True


class _Users(UserManager):
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if not self.users:
            return User(role=UserRole.User)
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


@dataclass
class _Node:
    point: Point
    node: Node
    vtype: ua.VariantType
    last: Any = None
    bad: str = ""


class ChillerServer:
    def __init__(self, plant: Plant, device: OpcUaDevice, profile: Profile[Point], *,
                 security: ServerSecurity | None = None, refresh: float = 0.25) -> None:
        self.plant = plant
        self.device = device
        self.profile = profile
        self.security = security
        self.refresh = refresh
        self.generation = 0
        self.server: Server | None = None
        self.nodes: dict[str, _Node] = {}
        self.running = asyncio.Event()
        # Write requests received from clients (tests check that a refused write sent nothing).
        self.writes = 0

    async def run(self) -> None:
        device_id = self.device.id
        try:
            while True:
                # The plant has no events to await: faults are polled on the refresh, like the values.
                while not self.plant.answering(device_id):  # noqa: ASYNC110
                    await asyncio.sleep(self.refresh)
                await self._start()
                try:
                    down = await self._serve()
                finally:
                    await self._stop()
                if down:
                    await asyncio.sleep(down)
                self.generation += 1
        finally:
            await self._stop()

    async def _serve(self) -> float:
        """Push values until a fault takes the server down; returns how long to stay down."""
        device_id = self.device.id
        while True:
            await self.push()
            restart = self.plant.fault(device_id, "restart")
            if restart is not None:
                self.plant.clear(device_id, "restart")
                return float(restart.get("down", 0.5))
            if not self.plant.answering(device_id):
                return 0.0
            await asyncio.sleep(self.refresh)

    async def _start(self) -> None:
        server = Server(user_manager=_Users(self.security.users if self.security else {}))
        await server.init()
        server.set_endpoint(self.device.endpoint)
        server.set_server_name(f"dcim simulated chiller {self.device.id}")
        policies = [ua.SecurityPolicyType.NoSecurity]
        if self.security is not None:
            await self._secure(server)
            policies = [ua.SecurityPolicyType.Basic256Sha256_Sign, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
            if self.security.allow_none:
                policies.insert(0, ua.SecurityPolicyType.NoSecurity)
            if self.security.users:
                server.set_identity_tokens([ua.UserNameIdentityToken])
        server.set_security_policy(policies)
        # Shift the namespace indexes on every restart, as real servers may: clients must use the URIs.
        for i in range(self.generation % 2):
            await server.register_namespace(f"{PADDING_NAMESPACE}:{i}")
        await self._build(server)
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_write)
        await server.start()
        self.server = server
        self.running.set()
        log.info("opcua simulator %s on %s (generation %d)", self.device.id, self.device.endpoint, self.generation)

    async def _secure(self, server: Server) -> None:
        assert self.security is not None
        cert = load_certificates(self.security.certificate)[0]
        uri = application_uri(cert)
        if uri is None:
            raise ValueError(f"{self.security.certificate}: no application URI in subjectAltName")
        await server.set_application_uri(uri)
        await server.load_certificate(str(self.security.certificate))
        await server.load_private_key(str(self.security.private_key))
        if self.security.trust_list is not None:
            trusted = load_trust_list(self.security.trust_list)

            async def validate(cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
                if not is_trusted(cert, trusted):
                    log.warning("opcua simulator %s refused an untrusted client certificate", self.device.id)
                    raise ServiceError(StatusCodes.BadCertificateUntrusted)

            server.set_certificate_validator(validate)

    async def _stop(self) -> None:
        server, self.server = self.server, None
        self.running.clear()
        if server is not None:
            # asyncua keeps a session with subscriptions alive after its connection drops (for the client to
            # reactivate); a real server that stops loses them all, and so must we, tasks included.
            sessions = getattr(server.iserver, "_external_sessions", {})
            for session in list(sessions.values()):
                with contextlib.suppress(Exception):
                    await session.close_session(True)
            with contextlib.suppress(Exception):
                await server.stop()

    # ---- address space ------------------------------------------------------------------------------

    async def _build(self, server: Server) -> None:
        uri = self.profile.options.get("namespace", f"urn:dcim:{self.profile.name}")
        idx = await server.register_namespace(uri)
        values = self.plant.values(self.device.id)
        objects: dict[str, Node] = {}

        async def folder(path: list[str]) -> Node:
            parent = server.nodes.objects
            for depth in range(1, len(path) + 1):
                key = ".".join(path[:depth])
                if key not in objects:
                    name = ua.QualifiedName(path[depth - 1], idx)
                    objects[key] = await parent.add_object(string_node(key, idx), name)
                parent = objects[key]
            return parent

        self.nodes = {}
        for point in self.profile.points:
            if point.node.startswith("/"):
                parts = point.node[1:].split("/")
            else:
                ident = point.node.split(";", 1)[1]
                if not ident.startswith("s="):
                    raise ValueError(f"the simulator serves string NodeIds only, not {point.node!r}")
                parts = ident[2:].split(".")
            parent = await folder(parts[:-1] or ["Chiller"])
            node_id = string_node(".".join(parts), idx)
            value = values.get(point.name)
            self.nodes[point.name] = await self._variable(parent, node_id, ua.QualifiedName(parts[-1], idx), point,
                                                          value)

    async def _variable(self, parent: Node, node_id: ua.NodeId, name: ua.QualifiedName, point: Point,
                        value: Value | None) -> _Node:
        if point.enum is not None:
            vtype = ua.VariantType.Int32
        elif isinstance(value, bool):
            vtype = ua.VariantType.Boolean
        else:
            vtype = ua.VariantType.Double
        node = await parent.add_variable(node_id, name, ua.Variant(self._raw(point, value, vtype), vtype))
        if point.writable is not False:
            await node.set_writable()
        if vtype is ua.VariantType.Double:
            await self._analog(node, point)
        return _Node(point, node, vtype)

    async def _analog(self, node: Node, point: Point) -> None:
        """Make `node` an AnalogItemType (Part 8): EURange and EngineeringUnits properties."""
        if isinstance(point.writable, WriteRange):
            low, high = point.writable.min, point.writable.max
        else:
            low, high = EU_RANGES.get(point.unit, (0.0, 100.0))
        await node.delete_reference(standard_node(ObjectIds.BaseDataVariableType), ObjectIds.HasTypeDefinition)
        await node.add_reference(standard_node(ObjectIds.AnalogItemType), ObjectIds.HasTypeDefinition)
        base = node.nodeid
        await node.add_property(string_node(f"{base.Identifier!s}.EURange", base.NamespaceIndex),
                                ua.QualifiedName("EURange", 0), ua.Range(Low=low, High=high))
        if point.unit in UNECE:
            info = ua.EUInformation(NamespaceUri=UNITS_NAMESPACE, UnitId=UNECE[point.unit],
                                    DisplayName=ua.LocalizedText("°C" if point.unit == "degC" else point.unit),
                                    Description=ua.LocalizedText(point.unit))
            await node.add_property(string_node(f"{base.Identifier!s}.EngineeringUnits", base.NamespaceIndex),
                                    ua.QualifiedName("EngineeringUnits", 0), info)

    @staticmethod
    def _raw(point: Point, value: Value | None, vtype: ua.VariantType) -> Any:
        if point.enum is not None:
            codes = {label: code for code, label in point.enum.items()}
            return codes.get(str(value), 0)
        if vtype is ua.VariantType.Boolean:
            return bool(value)
        return float(value) if isinstance(value, int | float) else 0.0

    # ---- values and writes --------------------------------------------------------------------------

    async def push(self) -> None:
        """Write the plant's current values into the address space (only those that changed)."""
        server = self.server
        if server is None:
            return
        values = self.plant.values(self.device.id)
        fault = self.plant.fault(self.device.id, "bad_node")
        bad_point = str(fault.get("point", "leaving_temp_c")) if fault is not None else ""
        bad_status = str(fault.get("status", "BadSensorFailure")) if fault is not None else ""
        now = ua.DateTime.now(UTC)
        for name, item in self.nodes.items():
            if name == bad_point:
                if item.bad != bad_status:
                    item.bad, item.last = bad_status, None
                    code = ua.StatusCode(getattr(StatusCodes, bad_status))
                    # An Uncertain status keeps its (last usable) value; a Bad one carries none.
                    value = None if code.is_bad() else ua.Variant(self._raw(item.point, values.get(name), item.vtype),
                                                                   item.vtype)
                    dv = ua.DataValue(value, StatusCode=code, SourceTimestamp=now, ServerTimestamp=now)
                    await server.write_attribute_value(item.node.nodeid, dv)
                continue
            raw = self._raw(item.point, values.get(name), item.vtype)
            if raw == item.last and not item.bad:
                continue
            item.last, item.bad = raw, ""
            dv = ua.DataValue(ua.Variant(raw, item.vtype), SourceTimestamp=now, ServerTimestamp=now)
            await server.write_attribute_value(item.node.nodeid, dv)

    async def _on_write(self, event: ServerItemCallback, dispatcher: Any) -> None:
        if not event.is_external:
            return
        self.writes += len(event.request_params.NodesToWrite)
        by_id = {item.node.nodeid: item for item in self.nodes.values()}
        for request, result in zip(event.request_params.NodesToWrite, event.response_params, strict=False):
            item = by_id.get(request.NodeId)
            if item is None or not result.is_good() or request.Value.Value is None:
                continue
            raw = request.Value.Value.Value
            value: Value = item.point.enum[raw] if item.point.enum and raw in item.point.enum else raw
            try:
                self.plant.write(self.device.id, item.point.name, value)
            except (KeyError, ValueError) as err:
                log.warning("opcua simulator %s: write %s=%r refused: %s", self.device.id, item.point.name, raw, err)
        # The plant may have refused or adjusted the value (a tripped chiller will not start): show its truth.
        for item in self.nodes.values():
            item.last = None
        await self.push()


async def serve(plant: Plant, devices: list[OpcUaDevice], *, security: ServerSecurity | None = None,
                profile_dirs: tuple[Path, ...] = (), refresh: float = 0.25,
                ready: asyncio.Event | None = None) -> None:
    """Serve every given chiller on its endpoint until cancelled. `ready` is set once every server has
    started (its socket bound) the first time; a server that cannot start fails the whole group instead."""
    async with asyncio.TaskGroup() as group:
        servers = []
        for device in devices:
            server = ChillerServer(plant, device, load_profile(device.profile, profile_dirs), security=security,
                                   refresh=refresh)
            servers.append(server)
            group.create_task(server.run(), name=f"opcua-sim-{device.id}")
        if ready is not None:
            for server in servers:
                await server.running.wait()
            ready.set()
