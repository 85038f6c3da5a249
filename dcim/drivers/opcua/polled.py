"""Polled OPC UA (`mode: poll`, and `dcim read`): connection, security, node resolution, reads and writes.

One asyncua Client per connection. After every (re)connect the profile's nodes are resolved again
(namespace URIs -> today's indexes, DataType, EURange, EngineeringUnits): see nodes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography.hazmat.primitives import serialization

from dcim.core.metrics import REGISTRY
from dcim.core.samples import Sample, Value, now_ns
from dcim.drivers.base import Driver
from dcim.drivers.errors import AuthError, BadResponse, DeviceTimeout, DeviceUnreachable, DriverError, WriteRejected
from dcim.drivers.opcua import nodes
from dcim.drivers.opcua.config import OpcUaDevice
from dcim.drivers.opcua.nodes import Resolved
from dcim.drivers.opcua.points import Point
from dcim.drivers.opcua.security import application_uri, check_trusted, first_certificate, load_certificates
from dcim.drivers.profiles import Profile

log = structlog.get_logger(__name__)

CONNECTS = REGISTRY.counter("dcim_opcua_connects_total", "OPC UA connection attempts", ("device", "result"))
ERRORS = REGISTRY.counter("dcim_opcua_errors_total", "OPC UA read failures and connection losses",
                          ("device", "error"))

_SECURITY_CODES = {
    "BadCertificateUntrusted": "the server does not trust our client certificate: add it to the server's trust list",
    "BadCertificateUriInvalid": "the application URI in our certificate does not match application_uri",
    "BadCertificateInvalid": "the server finds our client certificate invalid",
    "BadCertificateTimeInvalid": "a certificate has expired or is not valid yet",
    "BadSecurityChecksFailed": "security checks failed (certificate, key or trust list)",
    "BadSecurityPolicyRejected": "the server does not accept this security policy",
    "BadIdentityTokenInvalid": "the server does not accept this kind of identity",
    "BadIdentityTokenRejected": "the server rejected the username or password",
    "BadUserAccessDenied": "the user is not allowed to do this",
}


def error_from(err: BaseException, what: str) -> DriverError:
    """Library exceptions -> the drivers' own, with a message an operator can act on."""
    if isinstance(err, DriverError):
        return err
    if isinstance(err, TimeoutError):
        return DeviceTimeout(f"{what}: no answer in time")
    if isinstance(err, UaStatusCodeError):
        return status_error(ua.StatusCode(err.code), what)
    if isinstance(err, OSError):
        return DeviceUnreachable(f"{what}: {err.strerror or err}")
    return BadResponse(f"{what}: {type(err).__name__}: {err}")


def status_error(status: ua.StatusCode, what: str) -> DriverError:
    name = status.name
    if name in _SECURITY_CODES:
        return AuthError(f"{what}: {name}: {_SECURITY_CODES[name]}")
    return BadResponse(f"{what}: {name}")


class OpcUaDriver(Driver):
    """Polled OPC UA (`mode: poll`): one Read request per poll, writes, connection kept between polls."""

    device: OpcUaDevice
    profile: Profile[Point]

    def __init__(self, device: OpcUaDevice, profile: Profile[Point]) -> None:
        super().__init__(device, profile)
        self._client: Client | None = None
        self._resolved: list[Resolved] = []
        self._last: dict[str, Sample] = {}
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._lock = asyncio.Lock()
        self._rng = random.Random()
        # point -> (EURange, EngineeringUnits) as the server reports them, after each connect.
        self.metadata: dict[str, tuple[tuple[float, float] | None, str]] = {}

    # ---- connection -----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._lost.is_set()

    async def connect(self) -> None:
        async with self._lock:
            if self._client is not None and self._lost.is_set():
                await self._drop()
            if self._client is None:
                await self._open()

    async def _open(self) -> None:
        device = self.device
        client = Client(device.endpoint, timeout=device.timeout, watchdog_intervall=device.watchdog_interval)
        client.name = client.description = f"dcim {device.id}"
        client.application_uri = device.application_uri or "urn:dcim:client"
        # A short session timeout lets the server clean up after a client that vanished.
        client.session_timeout = max(10_000, int(device.watchdog_interval * 30_000))
        if device.username is not None and device.password is not None:
            client.set_user(device.username)
            client.set_password(device.password.get_secret_value())
        self._lost.clear()
        self._lost_reason = ""
        client.connection_lost_callback = self._on_lost
        try:
            if device.security_policy != "None":
                await self._secure(client)
            await client.connect()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            CONNECTS.inc(device=device.id, result="error")
            with contextlib.suppress(Exception):
                client.disconnect_socket()
            if isinstance(err, UaError) and "No matching endpoints" in str(err):
                raise AuthError(await self._no_endpoint(client)) from err
            raise error_from(err, f"connect to {device.endpoint}") from err
        try:
            self._resolved = await asyncio.wait_for(nodes.resolve(client, self.profile), device.timeout * 4)
        except asyncio.CancelledError:
            await self._close_client(client)
            raise
        except Exception as err:
            await self._close_client(client)
            raise error_from(err, f"resolve nodes on {device.endpoint}") from err
        CONNECTS.inc(device=device.id, result="ok")
        self._client = client
        self._describe_nodes()

    async def _secure(self, client: Client) -> None:
        """Basic256Sha256: check the server's certificate against our trust list before we trust it."""
        device = self.device
        assert device.certificate and device.private_key and device.trust_list
        # File reads off the event loop: certificates and trust lists may sit on slow storage.
        client.application_uri = await asyncio.to_thread(self._our_application_uri)
        mode = getattr(ua.MessageSecurityMode, device.security_mode)
        policy = security_policies.SecurityPolicyBasic256Sha256
        endpoints = await client.connect_and_get_server_endpoints()
        matching = [e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode]
        if not matching:
            raise AuthError(self._offers(endpoints))
        try:
            server_cert = first_certificate(matching[0].ServerCertificate)
        except ValueError as err:
            raise AuthError(f"{device.endpoint} sent a certificate we cannot parse ({err})") from err
        await asyncio.to_thread(check_trusted, server_cert, device.trust_list, f"server {device.endpoint}")
        password = device.private_key_password.get_secret_value() if device.private_key_password else None
        server_der = server_cert.public_bytes(serialization.Encoding.DER)
        await client.set_security(policy, device.certificate, device.private_key, password, server_der, mode)

    def _our_application_uri(self) -> str:
        device = self.device
        assert device.certificate and device.private_key
        for label, path in (("certificate", device.certificate), ("private_key", device.private_key)):
            if not Path(path).is_file():
                raise AuthError(f"{label} {path} does not exist (make one with `dcim opcua-cert`)")
        try:
            ours = load_certificates(Path(device.certificate))[0]
        except ValueError as err:
            raise AuthError(f"certificate {device.certificate}: not a certificate ({err})") from err
        uri = application_uri(ours)
        if uri is None:
            raise AuthError(f"certificate {device.certificate} has no application URI in its subjectAltName")
        if device.application_uri is not None and device.application_uri != uri:
            raise AuthError(f"application_uri {device.application_uri!r} differs from the certificate's {uri!r}")
        return uri

    def _offers(self, endpoints: list[ua.EndpointDescription]) -> str:
        offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name.rstrip('_')}"
                          for e in endpoints})
        return (
            f"{self.device.endpoint} offers no {self.device.security_policy}/{self.device.security_mode} "
            f"endpoint (it offers {', '.join(offered)})"
        )

    async def _no_endpoint(self, client: Client) -> str:
        try:
            return self._offers(await client.connect_and_get_server_endpoints())
        except asyncio.CancelledError:
            raise
        except Exception:
            return f"{self.device.endpoint} offers no {self.device.security_policy} endpoint"

    async def _on_lost(self, err: Exception) -> None:
        self._mark_lost(f"connection lost: {error_from(err, self.device.endpoint)}")

    def _mark_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._close_client(client)

    async def _close_client(self, client: Client) -> None:
        # A dead server never answers CloseSession: bound the polite goodbye, then drop the socket.
        try:
            await asyncio.wait_for(client.disconnect(), timeout=self.device.timeout)
        except asyncio.CancelledError:
            client.disconnect_socket()
            raise
        except Exception:
            log.debug("opcua.disconnect_failed", device=self.device.id, exc_info=True)
        with contextlib.suppress(Exception):
            client.disconnect_socket()

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    def _describe_nodes(self) -> None:
        self.metadata = {r.point.name: (r.eu_range, r.eu_unit) for r in self._resolved if r.node_id is not None}
        for item in self._resolved:
            if item.node_id is None and item.point.derive is None:
                log.warning("opcua.node_missing", device=self.device.id, point=item.point.name, reason=item.error)
            if warning := nodes.unit_mismatch(item):
                log.warning("opcua.unit_mismatch", device=self.device.id, detail=warning)

    async def _ready(self) -> Client:
        if not self.connected:
            await self.connect()
        assert self._client is not None
        return self._client

    # ---- polling ---------------------------------------------------------------------------------------

    async def read(self) -> list[Sample]:
        client = await self._ready()
        present = [r for r in self._resolved if r.node_id is not None]
        ids = [r.node_id for r in present if r.node_id is not None]
        try:
            values = await asyncio.wait_for(nodes.read_values(client, ids, AttributeIds.Value),
                                            self.device.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            error = error_from(err, f"read {self.device.endpoint}")
            ERRORS.inc(device=self.device.id, error=type(error).__name__)
            self._mark_lost(str(error))
            raise error from err
        now = now_ns()
        by_point = dict(zip((r.point.name for r in present), values, strict=True))
        out: list[Sample] = []
        for item in self._resolved:
            if item.node_id is None and item.point.derive is not None:
                continue
            sample = nodes.to_sample(self.device.id, item, by_point.get(item.point.name), now)
            if sample is not None:
                out.append(sample)
        out += self._derived({s.point: s for s in out}, now)
        self._remember(out)
        return out

    def _derived(self, known: dict[str, Sample], now: int) -> list[Sample]:
        return [
            nodes.derive(r.point, known, self.device.id, now, r.measurement)
            for r in self._resolved
            if r.node_id is None and r.point.derive is not None
        ]

    def _remember(self, samples: list[Sample]) -> None:
        # BAD ones too: a node that went bad must not come back as a STALE copy of its last good value.
        for sample in samples:
            self._last[sample.point] = sample

    # ---- writes ----------------------------------------------------------------------------------------

    def write_limits(self, point: str) -> tuple[float, float] | None:
        """The node's EURange as the server reported it at the last connect (None: none, or not connected).
        A write outside it is refused before sending, whatever range the profile allows."""
        eu_range, _unit = self.metadata.get(point, (None, ""))
        return eu_range

    async def write(self, point: str, value: Value) -> None:
        spec = self.profile.point(point)
        checked = spec.check_write(value)
        client = await self._ready()
        item = next((r for r in self._resolved if r.point.name == point), None)
        if item is None or item.node_id is None:
            raise WriteRejected(f"{point}: the server has no node for it ({item.error if item else 'unknown'})")
        limits = self.write_limits(point)
        if limits is not None and isinstance(checked, int | float) and not isinstance(checked, bool):
            low, high = limits
            if not low <= float(checked) <= high:
                raise WriteRejected(f"{point}: {checked} is outside the server's EURange {low:g}..{high:g}")
        variant = nodes.encode(item, checked)
        params = ua.WriteParameters()
        wv = ua.WriteValue()
        wv.NodeId = item.node_id
        wv.AttributeId = AttributeIds.Value
        wv.Value = ua.DataValue(variant)
        params.NodesToWrite = [wv]
        try:
            results = await asyncio.wait_for(client.uaclient.write(params), self.device.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            raise error_from(err, f"write {point}") from err
        status = results[0]
        if not status.is_good():
            raise status_error(status, f"write {point}={checked}")
        log.info("opcua.write", device=self.device.id, point=point, value=checked)
