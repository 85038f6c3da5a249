"""OPC UA driver (asyncua): subscriptions by default, polling reads as the fallback and for `dcim read`.

    driver = make_driver(device, profile, DriverContext())
    await driver.subscribe(emit, status)     # until cancelled; reconnects by itself
    samples = await driver.read()             # one Read request for every point
    await driver.write("setpoint_c", 17.5)    # range-checked, converted to the node's DataType, then sent

Connection life cycle, one asyncua Client per connection:

    connect -> resolve nodes (namespace URIs -> indexes, DataType, EURange, EngineeringUnits)
            -> create subscription + monitored items -> status(online) -> data changes -> emit
    lost (socket closed, watchdog probe failed, subscription status Bad*)
            -> status(offline, why) -> emit last values as STALE -> drop the client
            -> jittered capped backoff, re-emitting STALE every `interval` -> connect again (resolve again)

We do not use asyncua's own auto_reconnect: it restores the old monitored items with the old NodeIds, and
a restarted server may have renumbered its namespaces. A fresh client per connection re-resolves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription
from asyncua.crypto import security_policies
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography.hazmat.primitives import serialization

from dcim.metrics import REGISTRY
from dcim.samples import Quality, Sample, Value, now_ns
from drivers.base import Driver, DriverContext, SampleCallback, StatusCallback
from drivers.errors import AuthError, BadResponse, DeviceTimeout, DeviceUnreachable, DriverError, WriteRejected
from drivers.opcua import nodes
from drivers.opcua.config import OpcUaDevice
from drivers.opcua.nodes import Resolved
from drivers.opcua.points import Point
from drivers.opcua.security import application_uri, check_trusted, first_certificate, load_certificates
from drivers.profiles import Profile

log = structlog.get_logger(__name__)

CHANGES = REGISTRY.counter("dcim_opcua_data_changes_total", "OPC UA data change notifications", ("device",))
CONNECTS = REGISTRY.counter("dcim_opcua_connects_total", "OPC UA connection attempts", ("device", "result"))
ERRORS = REGISTRY.counter("dcim_driver_errors_total", "Driver errors", ("device", "error"))

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
        for sample in samples:
            if sample.quality is not Quality.BAD or sample.point not in self._last:
                self._last[sample.point] = sample

    # ---- writes ----------------------------------------------------------------------------------------

    async def write(self, point: str, value: Value) -> None:
        spec = self.profile.point(point)
        checked = spec.check_write(value)
        client = await self._ready()
        item = next((r for r in self._resolved if r.point.name == point), None)
        if item is None or item.node_id is None:
            raise WriteRejected(f"{point}: the server has no node for it ({item.error if item else 'unknown'})")
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



class OpcUaSubscriber(OpcUaDriver):
    """The default (`mode: subscribe`): monitored items push changes; `read()` still works for `dcim read`."""

    async def subscribe(self, emit: SampleCallback, status: StatusCallback) -> None:
        online: bool | None = None

        def report(now_online: bool, reason: str = "") -> None:
            nonlocal online
            if online is not now_online:
                online = now_online
                if now_online:
                    log.info("opcua.online", device=self.device.id)
                else:
                    log.warning("opcua.offline", device=self.device.id, error=reason)
                status(now_online, reason)

        try:
            await self._subscribe_forever(emit, report)
        finally:
            # Cancelled: leave no session behind on the server (and no client tasks behind here).
            async with self._lock:
                await self._drop()

    async def _subscribe_forever(self, emit: SampleCallback, report: Callable[[bool, str], None]) -> None:
        delay = self.device.reconnect_min
        while True:
            reason = ""
            try:
                await self.connect()
                delay = self.device.reconnect_min
                await self._run(emit, lambda: report(True, ""))
            except DriverError as err:
                reason = str(err)
            reason = reason or self._lost_reason or "connection lost"
            report(False, reason)
            ERRORS.inc(device=self.device.id, error="offline")
            self._emit_stale(emit, reason)
            async with self._lock:
                await self._drop()
            await self._pause(self._jitter(delay), emit, reason)
            delay = min(delay * 2, self.device.reconnect_max)

    def _jitter(self, delay: float) -> float:
        return delay * self._rng.uniform(0.5, 1.0)

    async def _pause(self, seconds: float, emit: SampleCallback, reason: str) -> None:
        """Wait out the backoff, re-emitting STALE samples every interval so the gap stays visible."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(left, self.device.interval))
            if loop.time() < end:
                self._emit_stale(emit, reason)

    def _emit_stale(self, emit: SampleCallback, reason: str) -> None:
        now = now_ns()
        out: list[Sample] = []
        for item in self._resolved or [Resolved(p, None) for p in self.profile.points]:
            last = self._last.get(item.point.name)
            if last is not None and last.value is not None:
                out.append(Sample(self.device.id, last.point, last.value, now, Quality.STALE, reason,
                                  last.measurement, last.tags))
            else:
                out.append(Sample(self.device.id, item.point.name, None, now, Quality.BAD, reason,
                                  self.profile.measurement(item.point)))
        emit(out)

    async def _run(self, emit: SampleCallback, went_online: Callable[[], None]) -> None:
        """One connection's subscription: returns (or raises DriverError) when the connection is lost."""
        client = self._client
        assert client is not None
        device = self.device
        try:
            sub = await client.create_subscription(device.publishing_interval * 1000, None, queue_maxsize=100_000)
            handles = await self._monitor(sub, emit)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            raise error_from(err, f"subscribe on {device.endpoint}") from err
        went_online()
        log.info("opcua.subscribed", device=device.id, items=len(handles),
                 publishing_interval=device.publishing_interval)
        consumer = asyncio.create_task(self._consume(sub, handles, emit), name=f"opcua-consume-{device.id}")
        lost = asyncio.create_task(self._lost.wait(), name=f"opcua-lost-{device.id}")
        try:
            await asyncio.wait((consumer, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (consumer, lost):
                task.cancel()
            await asyncio.gather(consumer, lost, return_exceptions=True)
        failure = consumer.exception() if consumer.done() and not consumer.cancelled() else None
        if failure is not None:
            raise error_from(failure, "subscription") from failure

    def _filter(self, item: Resolved) -> ua.DataChangeFilter | None:
        point, deadband = item.point, self.device.deadband
        numeric = item.variant_type in (ua.VariantType.Float, ua.VariantType.Double) and point.enum is None
        if not numeric:
            return None
        if point.deadband is not None:
            absolute = point.deadband
        elif deadband.type == "absolute":
            absolute = deadband.value
        elif deadband.type == "percent" and item.eu_range is None:
            log.info("opcua.no_eurange", device=self.device.id, point=point.name,
                     detail="no EURange on the server: percent deadband not applied")
            return None
        elif deadband.type == "percent" and item.eu_range is not None:
            # Requested as an absolute deadband of the EURange span: the same filter PercentDeadband defines,
            # and servers that do not implement PercentDeadband (asyncua's among them) still honour it.
            absolute = deadband.value / 100 * abs(item.eu_range[1] - item.eu_range[0])
        else:
            return None
        if absolute <= 0:
            return None
        flt = ua.DataChangeFilter()
        flt.Trigger = ua.DataChangeTrigger.StatusValue
        flt.DeadbandType = ua.DeadbandType.Absolute
        flt.DeadbandValue = absolute
        return flt

    async def _monitor(self, sub: Subscription, emit: SampleCallback) -> dict[int, Resolved]:
        requests: list[ua.MonitoredItemCreateRequest] = []
        handles: dict[int, Resolved] = {}
        missing: list[Sample] = []
        now = now_ns()
        for handle, item in enumerate(self._resolved, start=1):
            if item.node_id is None:
                if item.point.derive is None:
                    missing.append(nodes.bad(self.device.id, item, item.error or "no node", now))
                continue
            rv = ua.ReadValueId()
            rv.NodeId = item.node_id
            rv.AttributeId = AttributeIds.Value
            params = ua.MonitoringParameters()
            params.ClientHandle = handle
            params.SamplingInterval = self.device.sampling_interval * 1000
            params.QueueSize = self.device.queue_size
            params.DiscardOldest = True
            flt = self._filter(item)
            if flt is not None:
                params.Filter = flt
            request = ua.MonitoredItemCreateRequest()
            request.ItemToMonitor = rv
            request.MonitoringMode = ua.MonitoringMode.Reporting
            request.RequestedParameters = params
            requests.append(request)
            handles[handle] = item
        results = await sub.create_monitored_items(requests)
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, ua.StatusCode):
                item = handles.pop(request.RequestedParameters.ClientHandle)
                item.error = result.name
                log.warning("opcua.monitor_failed", device=self.device.id, point=item.point.name, status=result.name)
                missing.append(nodes.bad(self.device.id, item, item.error or "no node", now))
        if missing:
            emit(missing)
        return handles

    async def _consume(self, sub: Subscription, handles: dict[int, Resolved], emit: SampleCallback) -> None:
        """Turn notifications into samples. One publish's notifications go out as one list: the iterator does
        not yield to the loop while its queue has events, so the flush scheduled with call_soon runs after."""
        loop = asyncio.get_running_loop()
        pending: list[Sample] = []
        device = self.device.id
        derived = [r for r in self._resolved if r.node_id is None and r.point.derive is not None]
        deps = {n for r in derived if r.point.derive for n in (r.point.derive.numerator, r.point.derive.denominator)}

        def flush() -> None:
            batch = pending.copy()
            pending.clear()
            if derived and any(s.point in deps for s in batch):
                known = {**self._last, **{s.point: s for s in batch}}
                batch += self._derived(known, now_ns())
            self._remember(batch)
            emit(batch)

        async for event in sub:
            if isinstance(event, DataChangeEvent):
                item = handles.get(event.data.monitored_item.ClientHandle)
                if item is None:
                    continue
                CHANGES.inc(device=device)
                sample = nodes.to_sample(device, item, event.data.monitored_item.Value, now_ns())
                if sample is None:
                    continue
                if not pending:
                    loop.call_soon(flush)
                pending.append(sample)
            elif isinstance(event, StatusChangeEvent):
                code = event.notification.Status
                if code.is_bad():
                    self._mark_lost(f"subscription status {code.name}")
                    return


def make_driver(device: Any, profile: Profile[Any], context: DriverContext) -> OpcUaDriver:
    """`mode: subscribe` (default) gives a Subscriber; `mode: poll` a plain polled driver."""
    if not isinstance(device, OpcUaDevice):
        raise TypeError(f"{getattr(device, 'id', device)!r} is not an OPC UA device")
    if profile.protocol != "opcua":
        raise TypeError(f"profile {profile.name} is for {profile.protocol}, not opcua")
    if device.mode == "poll":
        return OpcUaDriver(device, profile)
    return OpcUaSubscriber(device, profile)
