"""OPC UA subscriptions (`mode: subscribe`, the default): monitored items, reconnect, STALE gaps.

Connection life cycle, one asyncua Client per connection:

    connect -> resolve nodes (namespace URIs -> indexes, DataType, EURange, EngineeringUnits)
            -> create subscription + monitored items -> status(online) -> data changes -> emit
    alive  -> every publishing interval the last GOOD values are emitted again with the current time
              (a heartbeat: see _heartbeat)
    lost (socket closed, watchdog probe failed, subscription status Bad*)
            -> status(offline, why) -> emit last values as STALE -> drop the client
            -> jittered capped backoff, re-emitting STALE every `interval` -> connect again (resolve again)

We do not use asyncua's own auto_reconnect: it restores the old monitored items with the old NodeIds, and
a restarted server may have renumbered its namespaces. A fresh client per connection re-resolves them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import structlog
from asyncua import ua
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription
from asyncua.ua.attribute_ids import AttributeIds

from dcim.core.aio import reraise_lost_cancellation
from dcim.core.backoff import Backoff
from dcim.core.metrics import REGISTRY
from dcim.core.samples import Quality, Sample, now_ns
from dcim.drivers.base import SampleCallback, StatusCallback
from dcim.drivers.errors import DriverError
from dcim.drivers.opcua import nodes
from dcim.drivers.opcua.nodes import Resolved
from dcim.drivers.opcua.polled import ERRORS, OpcUaDriver, error_from

log = structlog.get_logger(__name__)

CHANGES = REGISTRY.counter("dcim_opcua_data_changes_total", "OPC UA data change notifications", ("device",))


def by_time(samples: list[Sample]) -> list[list[Sample]]:
    """Samples -> one list per timestamp, oldest first; a point seen twice at one time keeps its later value."""
    groups: dict[int, dict[str, Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.ts_ns, {})[sample.point] = sample
    return [list(groups[ts].values()) for ts in sorted(groups)]


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
        backoff = Backoff(initial=self.device.reconnect_min, maximum=self.device.reconnect_max, rng=self._rng)
        while True:
            reason = ""
            try:
                await self.connect()
                reraise_lost_cancellation()
                backoff.reset()
                await self._run(emit, lambda: report(True, ""))
            except DriverError as err:
                reason = str(err)
            reason = reason or self._lost_reason or "connection lost"
            report(False, reason)
            ERRORS.inc(device=self.device.id, error="offline")
            self._emit_stale(emit, reason)
            async with self._lock:
                await self._drop()
            await self._pause(backoff.next(), emit, reason)

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
            reraise_lost_cancellation()  # asyncua's wait_for can swallow a cancellation (Python 3.11)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            raise error_from(err, f"subscribe on {device.endpoint}") from err
        went_online()
        log.info("opcua.subscribed", device=device.id, items=len(handles),
                 publishing_interval=device.publishing_interval)
        consumer = asyncio.create_task(self._consume(sub, handles, emit), name=f"opcua-consume-{device.id}")
        lost = asyncio.create_task(self._lost.wait(), name=f"opcua-lost-{device.id}")
        heartbeat = asyncio.create_task(self._heartbeat(emit), name=f"opcua-heartbeat-{device.id}")
        try:
            await asyncio.wait((consumer, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (consumer, lost, heartbeat):
                task.cancel()
            await asyncio.gather(consumer, lost, heartbeat, return_exceptions=True)
        failure = consumer.exception() if consumer.done() and not consumer.cancelled() else None
        if failure is not None:
            raise error_from(failure, "subscription") from failure

    async def _heartbeat(self, emit: SampleCallback) -> None:
        """A subscription reports changes only: a value that holds still (a setpoint, a stopped chiller's
        status) would be stored once and then nothing, and a chart grouped by time would be empty. While the
        subscription is alive, no notification means the value is unchanged, so it is re-emitted as GOOD
        with the current time once per publishing interval. Runs only inside `_run`: when the connection
        is lost it is cancelled, the values go STALE, and the database shows the gap."""
        while True:
            await asyncio.sleep(self.device.publishing_interval)
            now = now_ns()
            # All of them, also those a notification just refreshed: then no value waits longer than one
            # interval for its next point, whenever it last changed.
            due = [replace(s, ts_ns=now) for s in self._last.values() if s.ok]
            if due:
                self._remember(due)
                emit(due)

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
            # One publish may carry values measured at different times (each item's queue holds the changes
            # of a whole publishing interval). A batch is one line per measurement at one timestamp, so they
            # go out as one batch per source timestamp, oldest first: a chiller that trips half a second
            # after its last temperature change must not be stored as tripped at that earlier moment.
            groups = by_time(pending)
            pending.clear()
            for batch in groups:
                ts = batch[0].ts_ns
                if derived and any(s.point in deps for s in batch):
                    known = {**self._last, **{s.point: s for s in batch}}
                    batch += self._derived(known, ts)
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
