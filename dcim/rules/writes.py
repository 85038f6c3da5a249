"""The one write path: every write to equipment, whoever asks for it, passes the same guard.

    guard = WriteGuard(control_config, topology, drivers=lookup, maintenance=alarm_store, audit=AuditLog(...))
    result = await guard.write(WriteRequest("cdu-1", "flow_setpoint_lpm", 450, origin="cli:alice"))
    result.outcome      # verified | unverified | failed | refused | dry-run

Origins: `cli:<user>` (`dcim write --direct`), `api:<user>` (the daemon's HTTP API, which `dcim write` uses
when a daemon runs), `rule:<action>` (rules.control). The checks run in this order, and every one of them
before anything is sent; those that need no device run before the device is even contacted:

    1. profile      the point exists and is writable; the value is in range and on the step (drivers/profiles)
    2. device       the device's own limits where it publishes them (OPC UA EURange), when already known
    3. armed        rules.control.armed; a person's write while not armed only with rules.control.operator_writes
    4. maintenance  no maintenance window covers the device, its rack or a rack it serves (a CDU's racks)
    5. rate         at most one write per device and point per rules.control.min_interval (sent writes count,
                    whatever their outcome; the audit trail carries the memory across restarts)
    -- dry run stops here and reports what would be sent (raw value, protocol address) --
    6. connect, then the device's own limits again (EURange as the server reports it after this connect)
    7. read the old value, write, read back until the value equals what was written (within half the
       profile's step, or the encoding's resolution) or rules.control.verify_timeout passes. An outlet
       command is verified by the outlet's state (on, off; a cycle ends on); delayed commands cannot be.

Every attempt, refused ones included, is appended to the audit trail (dcim.core.audit) and published as
a batch of kind `audit` (MQTT and the `audit` measurement) when the daemon gives a `publish`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import structlog

from dcim.core.audit import AuditLog
from dcim.core.metrics import REGISTRY
from dcim.core.samples import Batch, Sample, Value, now_ns
from dcim.core.topology import Topology
from dcim.drivers.base import Driver
from dcim.drivers.errors import WriteRejected
from dcim.drivers.profiles import PointBase, WriteRange
from dcim.rules.config import ControlConfig

log = structlog.get_logger(__name__)

WRITES = REGISTRY.counter("dcim_writes_total", "Writes to equipment by origin kind and outcome",
                          ("origin", "outcome"))

NS = 1_000_000_000
# Outcomes after which something was sent to the device: these count for the rate limit.
SENT = frozenset({"verified", "unverified", "failed"})
# Commands that stop equipment (outlet off or cycle, a chiller or pump stop): the CLI asks first.
STOP_WORDS = frozenset({"off", "stop", "cycle", "reboot", "shutdown", "delayed_off", "delayed_cycle"})
# What an outlet's state must read after a command; the others (delayed, cancel) cannot be verified.
OUTLET_STATE_AFTER = {"on": "on", "off": "off", "cycle": "on"}
VERIFY_INTERVAL = 0.2


class WriteRefused(WriteRejected):
    """The guard refused a write before anything was sent (the message says which check and why)."""


class MaintenanceSource(Protocol):
    def in_maintenance(self, subjects: list[str] | tuple[str, ...], now_ns: int) -> Any: ...


@dataclass(frozen=True, slots=True)
class WriteRequest:
    device: str
    point: str
    value: Value
    # Who asks: "cli:<user>", "api:<user>", "rule:<action>".
    origin: str
    dry_run: bool = False
    # A write that stops equipment goes out only confirmed (the CLI asks; the HTTP API needs "confirm").
    confirmed: bool = True

    @property
    def origin_kind(self) -> str:
        return self.origin.partition(":")[0]

    @property
    def by_operator(self) -> bool:
        return self.origin_kind in ("cli", "api")


@dataclass(slots=True)
class WriteResult:
    device: str
    point: str
    value: Value
    origin: str
    outcome: str
    reason: str = ""
    old: Value | None = None
    new: Value | None = None
    raw: str = ""
    address: str = ""
    stops: bool = False
    seq: int | None = None
    hash: str = ""
    ts_ns: int = field(default_factory=now_ns)

    @property
    def ok(self) -> bool:
        return self.outcome in ("verified", "dry-run")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_point(point: str) -> tuple[str, str]:
    """`outlet_command:7` -> ("outlet_command", "7"); a scalar point has no index."""
    name, _, index = point.partition(":")
    return name, index


def writable_spec(driver: Driver, point: str) -> PointBase:
    """The profile's point a write of `point` goes to; raises WriteRejected (unknown, read-only)."""
    name, _ = split_point(point)
    candidates = [p for p in driver.profile.points if p.name == name and p.writable is not False]
    if candidates:
        spec: PointBase = candidates[0]
        return spec
    found: PointBase = driver.profile.point(name)  # raises "no point" for an unknown name
    return found


def stops_equipment(spec: PointBase, value: Value) -> bool:
    """Whether writing `value` stops something: an enum command such as off/cycle/stop, or false written to
    a run or enable flag (`running`, `pump_1_run`, `auto_flow_control` is not one)."""
    if isinstance(value, str):
        return value in STOP_WORDS
    if isinstance(value, bool) or (isinstance(value, int) and spec.writable is True and spec.enum is None):
        name = spec.name
        runs = name in ("running", "run", "start_stop", "enable", "enabled") or name.endswith(
            ("_running", "_run", "_enable", "_enabled")) or name.startswith("pump")
        return runs and not bool(value)
    return False


def device_limits(driver: Driver, point: str) -> tuple[float, float] | None:
    """The device's own range for a point, where the driver knows one (OPC UA EURange after a connect)."""
    limits = getattr(driver, "write_limits", None)
    if limits is None:
        return None
    found: tuple[float, float] | None = limits(point)
    return found


def describe(driver: Driver, spec: PointBase, point: str, value: Value) -> tuple[str, str]:
    """(raw value, protocol address) a write would send, for dry runs and the audit trail."""
    protocol = driver.profile.protocol
    _, index_text = split_point(point)
    try:
        if protocol == "modbus":
            from dcim.drivers.modbus import codec
            from dcim.drivers.modbus.points import Point as ModbusPoint

            assert isinstance(spec, ModbusPoint)
            unit = getattr(driver.device, "unit_id", "")
            if spec.table == "coil":
                return str(bool(value)).lower(), f"coil {spec.address} (unit {unit})"
            if spec.bit is not None:
                return (f"bit {spec.bit} := {int(bool(value))}",
                        f"holding {spec.address} (unit {unit}, read-modify-write)")
            registers = codec.encode(spec, value)
            return " ".join(str(r) for r in registers), f"{spec.table} {spec.address} (unit {unit})"
        if protocol == "snmp":
            from dcim.drivers.snmp.points import Point as SnmpPoint

            assert isinstance(spec, SnmpPoint)
            index = tuple(int(p) for p in index_text.split(".")) if index_text else ()
            oid = ".".join(str(n) for n in spec.instance(index))
            if spec.enum is not None:
                return str(spec.raw_for(str(value))), f"SET {oid}"
            if isinstance(value, str):
                return value, f"SET {oid}"
            return str(round(float(value) / spec.scale * 10 ** (spec.digits or 0))), f"SET {oid}"
        if protocol == "opcua":
            node = str(getattr(spec, "node", ""))
            return _text(value), f"node {node}"
    except (ValueError, KeyError, AssertionError) as err:
        raise WriteRejected(f"{point}: {value!r} cannot be encoded: {err}") from err
    return _text(value), point


def _text(value: Value | None) -> str:
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def tolerance(spec: PointBase, value: float) -> float:
    """How far a read-back may be from the written value: half a step, or of the encoding's resolution."""
    candidates = [1e-6 * max(1.0, abs(value))]
    if isinstance(spec.writable, WriteRange) and spec.writable.step is not None:
        candidates.append(spec.writable.step / 2)
    scale = getattr(spec, "scale", None)
    if isinstance(scale, int | float) and scale:
        candidates.append(abs(float(scale)) / 2)
    return max(candidates)


class WriteGuard:
    def __init__(self, control: ControlConfig, topology: Topology, *,
                 drivers: Callable[[str], Driver | None],
                 maintenance: MaintenanceSource | None = None,
                 audit: AuditLog | None = None,
                 publish: Callable[[Batch], None] | None = None,
                 connect: bool = False,
                 now: Callable[[], int] = now_ns) -> None:
        """`connect`: the guard connects the driver itself (`dcim write --direct`); in the daemon the
        device's coordinator owns the connection."""
        self.control = control
        self.topology = topology
        self.drivers = drivers
        self.maintenance = maintenance
        self.audit = audit
        self.publish = publish
        self.connect = connect
        self.now = now
        self._last_sent: dict[tuple[str, str], int] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._pending: set[asyncio.Task[None]] = set()
        # Set by a cluster node (dcim.app.cluster): called right before anything is sent, returns why this
        # node may not write to the device now (its shard moved, its lease lapsed), or None.
        self.fence: Callable[[str], Awaitable[str | None]] | None = None
        if audit is not None:
            for record in audit.records():
                if record.get("outcome") in SENT:
                    key = (str(record.get("device")), str(record.get("point")))
                    self._last_sent[key] = max(self._last_sent.get(key, 0), int(record.get("ts_ns") or 0))

    # ---- checks ----------------------------------------------------------------------------------------

    def profile_check(self, driver: Driver, request: WriteRequest) -> tuple[PointBase, Value]:
        spec = writable_spec(driver, request.point)
        checked = spec.check_write(request.value)
        # A table point (an SNMP outlet column) is written one row at a time: `outlet_command:7`.
        _, index = split_point(request.point)
        tag = getattr(spec, "index_tag", None)
        if tag and not index:
            raise WriteRejected(f"{spec.name} addresses one {tag}: write {spec.name}:<{tag}>, e.g. {spec.name}:7")
        if index and not tag:
            raise WriteRejected(f"{spec.name} is not a table point: write it without ':{index}'")
        if index and not all(part.isdigit() for part in index.split(".")):
            raise WriteRejected(f"{spec.name}: {index!r} is not a row index (e.g. {spec.name}:7)")
        return spec, checked

    def limits_check(self, driver: Driver, request: WriteRequest, value: Value) -> None:
        limits = device_limits(driver, request.point)
        if limits is None or isinstance(value, bool) or not isinstance(value, int | float):
            return
        low, high = limits
        if not low <= float(value) <= high:
            raise WriteRefused(f"{request.point}: {value} is outside the device's own range {low:g}..{high:g} "
                               f"(EURange reported by the device)")

    def envelope_check(self, request: WriteRequest, now: int) -> None:
        """Armed, maintenance, rate: raises WriteRefused."""
        control = self.control
        if not control.armed:
            if not request.by_operator:
                raise WriteRefused("control is not armed (rules.control.armed is false)")
            if not control.operator_writes:
                raise WriteRefused("control is not armed (rules.control.armed is false) and operator writes "
                                   "are not allowed (rules.control.operator_writes is false)")
        if self.maintenance is not None:
            # The device, the rack it stands in, and the racks it serves (a CDU's loop): hands may be in any.
            subjects = [request.device, *self.topology.racks_served_by(request.device)]
            rack = dict(self.topology.tags(request.device)).get("rack")
            if rack:
                subjects.append(rack)
            window = self.maintenance.in_maintenance(subjects, now)
            if window is not None:
                reason = getattr(window, "reason", "")
                raise WriteRefused(f"maintenance window on {getattr(window, 'subject', '?')}"
                                   + (f" ({reason})" if reason else ""))
        last = self._last_sent.get((request.device, request.point))
        if last is not None and now - last < control.min_interval * NS:
            raise WriteRefused(f"rate limit: {request.device} {request.point} was written {(now - last) / NS:.1f} s "
                               f"ago (at most one write per {control.min_interval:g} s)")

    # ---- the write ---------------------------------------------------------------------------------------

    async def write(self, request: WriteRequest) -> WriteResult:
        lock = self._locks.setdefault((request.device, request.point), asyncio.Lock())
        try:
            # One write per point at a time: the rate check and the send must not interleave.
            async with lock:
                result = await self._write(request)
        except asyncio.CancelledError:
            # Cancelled (a caller's deadline, shutdown): the attempt is still recorded, right here.
            lost = WriteResult(request.device, request.point, request.value, request.origin, "failed",
                               "cancelled before the outcome was known (the write may have been sent)",
                               ts_ns=self.now())
            if self.audit is not None:
                self.audit.append({k: v for k, v in lost.to_dict().items() if k not in ("seq", "hash")})
            raise
        await self._record(result)
        return result

    async def _write(self, request: WriteRequest) -> WriteResult:
        result = WriteResult(request.device, request.point, request.value, request.origin, "refused",
                             ts_ns=self.now())
        driver = self.drivers(request.device)
        if driver is None:
            result.reason = f"no device {request.device!r}"
            return result
        try:
            spec, checked = self.profile_check(driver, request)
            result.value = checked
            result.stops = stops_equipment(spec, checked)
            result.raw, result.address = describe(driver, spec, request.point, checked)
            self.limits_check(driver, request, checked)
            self.envelope_check(request, result.ts_ns)
            if result.stops and not request.confirmed and not request.dry_run:
                raise WriteRefused(f"{request.point} <- {checked} stops equipment: it needs confirmation")
        except WriteRejected as err:
            result.reason = str(err)
            return result
        if request.dry_run:
            result.outcome = "dry-run"
            return result
        if self.fence is not None:
            fenced = await self.fence(request.device)
            if fenced is not None:
                result.reason = f"fenced: {fenced}"
                return result
        # A driver that reports the device's own limits learns them on connecting (idempotent there);
        # in the daemon the other drivers' connections belong to their coordinators.
        if self.connect or hasattr(driver, "write_limits"):
            try:
                await driver.connect()
            except Exception as err:  # drivers raise DriverError; anything else must still be recorded
                result.outcome, result.reason = "failed", f"cannot connect: {err or type(err).__name__}"
                return result
            try:
                self.limits_check(driver, request, checked)
            except WriteRejected as err:
                result.reason = str(err)
                return result
        result.old = await self._read_back(driver, spec, request.point)
        key = (request.device, request.point)
        previous = self._last_sent.get(key)
        self._last_sent[key] = self.now()
        try:
            await driver.write(request.point, checked)
        except WriteRejected as err:
            # The driver refused before sending: this attempt does not count against the rate.
            if previous is None:
                self._last_sent.pop(key, None)
            else:
                self._last_sent[key] = previous
            result.reason = str(err)
            return result
        except Exception as err:  # drivers raise DriverError; anything else must still be recorded
            result.outcome, result.reason = "failed", str(err) or type(err).__name__
            return result
        await self._verify(driver, spec, request.point, checked, result)
        return result

    async def _verify(self, driver: Driver, spec: PointBase, point: str, value: Value, result: WriteResult) -> None:
        expected: Value = value
        if not _readable(spec):
            state = OUTLET_STATE_AFTER.get(str(value))
            if state is None:
                result.outcome, result.reason = "unverified", f"{value!r} is a delayed command: nothing to read back"
                return
            expected = state
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.control.verify_timeout
        while True:
            got = await self._read_back(driver, spec, point)
            result.new = got
            if got is not None and _matches(spec, got, expected):
                result.outcome = "verified"
                return
            if loop.time() >= deadline:
                result.outcome = "unverified"
                result.reason = (f"read back {got!r}, expected {expected!r} within "
                                 f"{self.control.verify_timeout:g} s")
                return
            await asyncio.sleep(VERIFY_INTERVAL)

    async def _read_back(self, driver: Driver, spec: PointBase, point: str) -> Value | None:
        """The point's current value (for a write-only command point, the state it controls), or None."""
        _name, index = split_point(point)
        state = spec if _readable(spec) else _state_point(driver, spec)
        if state is None:
            return None
        try:
            samples = await asyncio.wait_for(driver.read(), self.control.verify_timeout)
        except Exception as err:  # a read-back that fails leaves the write unverified, never unrecorded
            log.info("write read-back failed", device=driver.device.id, point=point,
                     error=str(err) or type(err).__name__)
            return None
        tag = getattr(spec, "index_tag", None)
        for sample in samples:
            if sample.point != state.name or not sample.ok:
                continue
            if index and tag and dict(sample.tags).get(tag) != index:
                continue
            return sample.value
        return None

    def note_refusal(self, device: str, point: str, value: Value, origin: str, reason: str) -> None:
        """Record a write refused before it reached this guard (a rule action outside its envelope or
        budget, rules.control): the audit trail has every attempt. Recorded in the background."""
        result = WriteResult(device, point, value, origin, "refused", reason, ts_ns=self.now())
        task = asyncio.get_running_loop().create_task(self._record(result), name=f"audit:{device}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # ---- the record ----------------------------------------------------------------------------------------

    async def _record(self, result: WriteResult) -> None:
        WRITES.inc(origin=result.origin.partition(":")[0], outcome=result.outcome)
        (log.info if result.outcome in ("verified", "dry-run") else log.warning)(
            "write", device=result.device, point=result.point, value=result.value, origin=result.origin,
            outcome=result.outcome, reason=result.reason or None, old=result.old, new=result.new)
        if self.audit is not None:
            fields = {k: v for k, v in result.to_dict().items() if k not in ("seq", "hash")}
            stored = await asyncio.to_thread(self.audit.append, fields)
            result.seq, result.hash = int(stored["seq"]), str(stored["hash"])
        if self.publish is not None:
            self.publish(audit_batch(result))


def audit_batch(result: WriteResult) -> Batch:
    """An audit record as samples of the `audit` measurement (MQTT topic {prefix}/{site}/audit/{device})."""
    tags = tuple(sorted({"point": result.point, "origin": result.origin, "outcome": result.outcome}.items()))
    fields: dict[str, Value | None] = {
        "value": _text(result.value), "old": _text(result.old), "new": _text(result.new),
        "reason": result.reason, "seq": result.seq, "hash": result.hash,
    }
    samples = [Sample(result.device, name, value, result.ts_ns, measurement="audit", tags=tags)
               for name, value in fields.items() if value is not None]
    return Batch(result.device, "audit", result.ts_ns, samples)


def _readable(spec: PointBase) -> bool:
    return bool(getattr(spec, "readable", True))


def _state_point(driver: Driver, spec: PointBase) -> PointBase | None:
    """The readable point that shows what a write-only command did: same row table, an on/off enum."""
    tag = getattr(spec, "index_tag", None)
    for point in driver.profile.points:
        if point is spec or not _readable(point) or getattr(point, "index_tag", None) != tag:
            continue
        if point.measurement == spec.measurement and point.enum and {"on", "off"} <= set(point.enum.values()):
            found: PointBase = point
            return found
    return None


def _matches(spec: PointBase, got: Value, expected: Value) -> bool:
    if isinstance(expected, bool) or isinstance(got, bool) or isinstance(expected, str) or isinstance(got, str):
        return got == expected
    return math.isclose(float(got), float(expected), rel_tol=0, abs_tol=tolerance(spec, float(expected)))
