"""SNMP driver for rack PDUs: a poll is a GET of the scalars and multi-column GETBULK walks of the tables.

    driver = make_driver(device, profile, context)     # context.shared: the UDP socket / pysnmp engine
    await driver.connect()
    samples = await driver.read()                      # inside the device's `deadline`
    await driver.write("outlet_command:7", "off")      # canonical outlet control

Requests: through the driver's BER codec (fast.py for v1/v2c, fast_v3.py for v3 USM) over one UDP socket per
process, shared through `DriverContext.shared` and closed with the last driver that uses it, so every driver
must be closed. With `client: pysnmp`, session.py sends the same requests through pysnmp's engine (one per
process).

Plan (built once per profile): scalars and the scalar decimal-digits objects go in GETs of up to
`GET_CHUNK` varbinds; table columns are grouped by walk prefix, so Raritan's value column (current, power and
energy rows of one outlet under one prefix) is walked once and its rows dispatched by their suffix. Columns of
like length are walked together with multi-column GETBULKs until each leaves its prefix; once a column's row
count is known, a walk asks for one row past it (see `_walk`).

Decimal digits (Raritan) are read on the first poll after connecting or after a failed poll, and kept: a
firmware update or a swapped PDU that changes them is a new connection by then.

Outlet writes: the canonical point is `outlet_command` with the outlet number after a colon,
`write("outlet_command:7", "off")`; the value is one of the profile's enum names (`on`, `off`, `cycle`, ...).
A v1/v2c device without `write_community` refuses every write before anything is sent.

Hostile or broken agents: nothing an agent answers raises anything but a `DriverError`. A value that cannot be
a reading (more than 64 bits, a string where a number belongs, a scaling that overflows, decimal digits out of
0..9) is a BAD sample with the reason; so is a point the agent does not have (noSuchObject, noSuchInstance,
endOfMibView, noSuchName, a column with no rows), logged once per device and point. A walk stops at the
device's `max_walk_rows` rows per column and its `walk_timeout`; a column cut off there is a BAD sample.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from pysnmp.proto import rfc1905

from dcim.core.metrics import REGISTRY
from dcim.core.samples import Quality, Sample, Value, now_ns
from dcim.drivers.base import DeviceBase, Driver, DriverContext
from dcim.drivers.errors import BadResponse, DeviceTimeout, DriverError, WriteRejected
from dcim.drivers.profiles import ByProfile, Profile
from dcim.drivers.snmp import fast
from dcim.drivers.snmp.config import SnmpDevice
from dcim.drivers.snmp.fast_v3 import UsmSession
from dcim.drivers.snmp.points import Point
from dcim.drivers.snmp.session import Oid, Session, VarBind
from dcim.drivers.snmp.status import StatusError

GET_CHUNK = 40
# Tables of up to this many rows (phases, banks, probes) are walked together in one request.
SHORT_TABLE = 8
# An exception value (noSuchObject, noSuchInstance, endOfMibView) means "not there": omitted, like -1.
_ABSENT = (rfc1905.NoSuchObject, rfc1905.NoSuchInstance, rfc1905.EndOfMibView, fast.NoValue)
_END = (rfc1905.EndOfMibView, fast.NoValue)
# Raw integers beyond 64 bits are no reading any PDU makes (Counter64 is the widest SMI type).
MAX_RAW_BITS = 64
# A scalar that is not in the agent's answer at all (SNMPv1 noSuchName dropped it from the request).
_NOT_ANSWERED = object()
# Row indexes whose tag text is kept per driver: far more than any PDU has rows.
_INDEX_TEXTS_MAX = 10_000

log = structlog.get_logger(__name__)


class Requests(Protocol):
    """What a poll needs from a session: the BER codec's (`fast.FastSession` v1/v2c, `fast_v3.UsmSession`)
    or pysnmp's (`session.Session`, with `client: pysnmp`)."""

    async def get(self, oids: Sequence[Oid]) -> list[VarBind]: ...

    async def bulk(self, oids: Sequence[Oid], max_repetitions: int) -> list[VarBind]: ...

    async def set(self, oid: Oid, value: int, syntax: str) -> None: ...

    def close(self) -> None: ...


def open_session(device: SnmpDevice, context: DriverContext) -> Requests:
    """Every version through the BER codec (a tenth of pysnmp's CPU, bench/snmp.md); SNMPv3's USM reuses
    pysnmp's key localisation and ciphers. `session.Session` (all pysnmp) does the same requests."""
    if device.client == "pysnmp":
        return Session(device, context)
    if device.version == "3":
        return UsmSession(device, context)
    return fast.FastSession(device, context)

POLL_SECONDS = REGISTRY.summary("dcim_snmp_poll_seconds", "SNMP poll wall time", ("device",))
REQUESTS = REGISTRY.counter("dcim_snmp_requests_total", "SNMP requests sent", ("device", "kind"))
ERRORS = REGISTRY.counter("dcim_snmp_errors_total", "SNMP polls that failed", ("device", "error"))


@dataclass(frozen=True, slots=True)
class _Column:
    suffix: Oid
    point: Point


@dataclass
class Plan:
    """What one poll of a profile asks for; shared by every device of that profile."""

    scalars: list[tuple[Oid, Point]] = field(default_factory=list)
    walks: dict[Oid, list[_Column]] = field(default_factory=dict)
    digit_scalars: list[Oid] = field(default_factory=list)
    # Decimal-digits columns to walk (every row is kept: the points pick theirs by OID).
    digit_walks: set[Oid] = field(default_factory=set)
    decimals: dict[int, int] = field(default_factory=dict)  # id(point) -> decimals of its scale
    # Sensor state objects (`state_oid`), read every poll with the values: scalars to GET, columns to walk.
    state_scalars: list[Oid] = field(default_factory=list)
    state_walks: set[Oid] = field(default_factory=set)

    @classmethod
    def build(cls, profile: Profile[Point]) -> Plan:
        plan = cls()
        for point in profile.points:
            plan.decimals[id(point)] = max(0, math.ceil(-math.log10(abs(point.scale)) - 1e-9))
            if not point.readable:
                continue
            if point.state_oid is not None and point.is_column:
                plan.state_walks.add(tuple(int(x) for x in point.state_oid.partition("*")[0].strip(".").split(".")))
            elif point.state_oid is not None:
                plan.state_scalars.append(point.state_instance() or ())
            if point.is_column:
                prefix, suffix = point.split()
                plan.walks.setdefault(prefix, []).append(_Column(suffix, point))
                if point.digits_oid is not None and "*" in point.digits_oid:
                    head = point.digits_oid.partition("*")[0]
                    plan.digit_walks.add(tuple(int(x) for x in head.strip(".").split(".")))
                elif point.digits_oid is not None:
                    plan.digit_scalars.append(point.digits_instance() or ())
            else:
                plan.scalars.append((point.instance(), point))
                digits = point.digits_instance()
                if digits is not None:
                    plan.digit_scalars.append(digits)
        plan.digit_scalars = sorted(set(plan.digit_scalars))
        return plan


def _ints(var_binds: Iterable[tuple[Oid, Any]]) -> dict[Oid, int]:
    out: dict[Oid, int] = {}
    for oid, value in var_binds:
        if value is None or isinstance(value, (*_ABSENT, bytes, bytearray, str, tuple, fast.Malformed)):
            continue
        try:
            out[oid] = int(value)
        except (TypeError, ValueError):
            continue
    return out


_PLANS: ByProfile[Plan] = ByProfile()


def plan_for(profile: Profile[Point]) -> Plan:
    return _PLANS.get(profile, lambda: Plan.build(profile))


def _chunks(items: list[Oid], size: int) -> Iterable[list[Oid]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class SnmpDriver(Driver):
    def __init__(self, device: SnmpDevice, profile: Profile[Point], context: DriverContext) -> None:
        super().__init__(device, profile)
        self.config = device
        self.context = context
        self.plan = plan_for(profile)
        # Compiled once, not per poll: each scalar's tags, and each row index's tag text (bounded by the rows).
        self._scalar_tags = [tuple(sorted(point.tags.items())) for _, point in self.plan.scalars]
        self._index_text: dict[Oid, str] = {}
        self.session: Requests | None = None
        self._digits: dict[Oid, int] | None = None
        self._row_counts: dict[Oid, int] = {}
        self._states: dict[Oid, int] = {}
        # Columns whose last walk was cut off (prefix -> reason); they yield a BAD sample, not rows.
        self._cut: dict[Oid, str] = {}
        # (point, OID) already logged as absent: once per driver, however many polls (bounded by the profile).
        self._reported: set[tuple[str, Oid]] = set()
        self._lock = asyncio.Lock()
        # The poller's default (dcim.app.poller.poll_deadline): one request's tries and a little slack. A healthy
        # agent answers a whole poll's requests well within that; a dead one is cut off there.
        self.deadline = device.deadline or device.timeout * (device.retries + 1) + 0.25

    async def connect(self) -> None:
        if self.session is None:
            self.session = open_session(self.config, self.context)
        self._digits = None

    async def close(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            except Exception:
                # close() never raises: the engine entry is dropped with the session either way.
                pass
            self.session = None
        self._digits = None

    def _session(self) -> Requests:
        if self.session is None:
            self.session = open_session(self.config, self.context)
        return self.session

    # ---- reading -------------------------------------------------------------------------------------

    async def read(self) -> list[Sample]:
        started = time.monotonic()
        try:
            async with self._lock, asyncio.timeout(self.deadline):
                if self._digits is None:
                    self._digits = await self._read_digits()
                # State objects ride along in the same requests (often the very column another point
                # walks already, e.g. Raritan's outlet sensor states).
                scalars = await self._get_all([oid for oid, _ in self.plan.scalars] + self.plan.state_scalars)
                columns = await self._walk(list(self.plan.walks.keys() | self.plan.state_walks))
                states = _ints([*((oid, scalars.get(oid)) for oid in self.plan.state_scalars),
                                *(vb for prefix in self.plan.state_walks for vb in columns.get(prefix, ()))])
        except TimeoutError as err:
            self._digits = None
            ERRORS.inc(device=self.device.id, error="deadline")
            raise DeviceTimeout(f"{self.device.id} ({self.config.host}:{self.config.port}): "
                                f"poll deadline of {self.deadline:g}s passed") from err
        except DriverError as err:
            self._digits = None
            ERRORS.inc(device=self.device.id, error=type(err).__name__)
            raise
        finally:
            POLL_SECONDS.observe(time.monotonic() - started, device=self.device.id)
        return self._decode(scalars, columns, now_ns(), states)

    async def _get_all(self, oids: list[Oid]) -> dict[Oid, Any]:
        out: dict[Oid, Any] = {}
        session = self._session()
        for chunk in _chunks(oids, GET_CHUNK):
            REQUESTS.inc(device=self.device.id, kind="get")
            out.update(await self._get_tolerant(session, chunk))
        return out

    async def _get_tolerant(self, session: Requests, oids: list[Oid]) -> list[VarBind]:
        """GET; on SNMPv1 an absent object fails the whole request (noSuchName): drop it and ask again."""
        remaining = list(oids)
        while remaining:
            try:
                return await session.get(remaining)
            except StatusError as err:
                if err.status != "noSuchName" or not 0 < err.index <= len(remaining):
                    raise
                del remaining[err.index - 1]
        return []

    async def _walk(self, prefixes: list[Oid]) -> dict[Oid, list[VarBind]]:
        """Walk columns of like length together, so few repetitions are wasted past a short table's end.

        A column's row count is learnt on its first walk; later walks ask for just one row more than that
        (to see the end), in groups of similar length, capped by `max_repetitions`. A column cut off by the
        walk limits comes back empty, with its reason in `self._cut`."""
        self._cut = {}
        started = time.monotonic()
        groups: dict[object, list[Oid]] = {}
        for prefix in prefixes:
            known = self._row_counts.get(prefix)
            key = "unknown" if known is None else ("short" if known <= SHORT_TABLE else known)
            groups.setdefault(key, []).append(prefix)
        rows: dict[Oid, list[VarBind]] = {}
        for group in groups.values():
            rows.update(await self._walk_group(group, started))
        for prefix, found in rows.items():
            if prefix in self._cut:
                self._row_counts.pop(prefix, None)
            else:
                self._row_counts[prefix] = len(found)
        return rows

    async def _walk_group(self, prefixes: list[Oid], started: float) -> dict[Oid, list[VarBind]]:
        """Walk several columns at once; each stops where its rows leave its prefix, or at the walk limits."""
        session = self._session()
        rows: dict[Oid, list[VarBind]] = {prefix: [] for prefix in prefixes}
        cursor = {prefix: prefix for prefix in prefixes}
        active = list(prefixes)
        limit = self.config.max_walk_rows
        while active:
            if self.config.walk_timeout is not None and time.monotonic() - started > self.config.walk_timeout:
                for prefix in active:
                    self._cut_off(prefix, rows, f"walk stopped after {len(rows[prefix])} rows: walk_timeout of "
                                               f"{self.config.walk_timeout:g}s passed")
                break
            REQUESTS.inc(device=self.device.id, kind="bulk")
            repetitions = self.config.max_repetitions
            if all(p in self._row_counts for p in active):
                # One row past the known end shows the end; a table that grew is walked on regardless.
                wanted = max(self._row_counts[p] - len(rows[p]) + 1 for p in active)
                repetitions = max(1, min(repetitions, wanted))
            answer = await session.bulk([cursor[p] for p in active], repetitions)
            if not answer:
                raise BadResponse(f"{self.device.id}: empty GETBULK response")
            width = len(active)
            finished: set[Oid] = set()
            for k, (oid, value) in enumerate(answer):
                prefix = active[k % width]
                if prefix in finished:
                    continue
                if isinstance(value, _END) or oid[:len(prefix)] != prefix:
                    finished.add(prefix)
                    continue
                if oid <= cursor[prefix]:
                    raise BadResponse(f"{self.device.id}: agent returned non-increasing OID "
                                      f"{'.'.join(map(str, oid))}")
                cursor[prefix] = oid
                rows[prefix].append((oid, value))
                if len(rows[prefix]) >= limit:
                    # The next answer would be row limit + 1: a table that long is no PDU's, stop here.
                    finished.add(prefix)
                    self._cut_off(prefix, rows, f"walk stopped at max_walk_rows ({limit} rows)")
            active = [p for p in active if p not in finished]
        return rows

    def _cut_off(self, prefix: Oid, rows: dict[Oid, list[VarBind]], reason: str) -> None:
        """A column the walk limits cut off: its rows are dropped (an endless table is not trusted, and each
        row would be a new series downstream); its points get one BAD sample with `reason`."""
        rows[prefix] = []
        self._cut[prefix] = reason
        ERRORS.inc(device=self.device.id, error="walk_limit")

    async def _read_digits(self) -> dict[Oid, int]:
        """Decimal digits per OID; -1 for an answer that is no digit count (0..9), which makes its points BAD."""
        digits: dict[Oid, int] = {}
        if self.plan.digit_scalars:
            for oid, value in (await self._get_all(self.plan.digit_scalars)).items():
                if not isinstance(value, _ABSENT):
                    digits[oid] = _digit_count(value)
        if self.plan.digit_walks:
            for found in (await self._walk(sorted(self.plan.digit_walks))).values():
                for oid, value in found:
                    if not isinstance(value, _ABSENT):
                        digits[oid] = _digit_count(value)
        return digits

    # ---- decoding ------------------------------------------------------------------------------------

    def _decode(self, scalars: dict[Oid, Any], columns: dict[Oid, list[VarBind]], ts: int,
                states: dict[Oid, int] | None = None) -> list[Sample]:
        samples: list[Sample] = []
        self._states = states or {}
        for (oid, point), tags in zip(self.plan.scalars, self._scalar_tags, strict=True):
            value = scalars.get(oid, _NOT_ANSWERED)
            if value is _NOT_ANSWERED or isinstance(value, _ABSENT):
                what = "noSuchName" if value is _NOT_ANSWERED else _absent_name(value)
                samples.append(self._absent(point, oid, f"{what}: the agent has no {_dotted(oid)}", tags, ts))
                continue
            sample = self._sample(point, value, point.digits_instance(), tags, ts, point.state_instance())
            if sample is not None:
                samples.append(sample)
        for prefix, found in columns.items():
            # A prefix walked for sensor states only has no columns of its own.
            columns_here = self.plan.walks.get(prefix, [])
            cut = self._cut.get(prefix)
            if cut is not None or not found:
                for column in columns_here:
                    if cut is not None:
                        samples.append(self._bad(column.point, cut, (), ts))
                    else:
                        samples.append(self._absent(
                            column.point, prefix,
                            f"no rows under {_dotted(prefix)} (the agent has no such table, or it is empty)", (), ts))
                continue
            for oid, value in found:
                rest = oid[len(prefix):]
                for column in columns_here:
                    suffix = column.suffix
                    if suffix and (len(rest) <= len(suffix) or rest[-len(suffix):] != suffix):
                        continue
                    index = rest[:len(rest) - len(suffix)] if suffix else rest
                    if not index:
                        continue
                    point = column.point
                    if not point.wants_row(index):
                        continue
                    assert point.index_tag is not None
                    text = self._index_text.get(index)
                    if text is None:
                        if len(self._index_text) >= _INDEX_TEXTS_MAX:
                            self._index_text.clear()  # a hostile agent's ever-new indexes: start again
                        text = self._index_text[index] = ".".join(map(str, index))
                    tags = ((point.index_tag, text),)
                    sample = self._sample(point, value, point.digits_instance(index), tags, ts,
                                          point.state_instance(index))
                    if sample is not None:
                        samples.append(sample)
        return samples

    def _bad(self, point: Point, reason: str, tags: tuple[tuple[str, str], ...], ts: int) -> Sample:
        return Sample(self.device.id, point.name, None, ts, Quality.BAD, reason,
                      point.measurement or self.profile.kind, tags)

    def _absent(self, point: Point, oid: Oid, reason: str, tags: tuple[tuple[str, str], ...], ts: int) -> Sample:
        """A point the agent does not have: a BAD sample every poll, a warning once per driver."""
        if (point.name, oid) not in self._reported:
            self._reported.add((point.name, oid))
            log.warning("snmp point not on the device", device=self.device.id, point=point.name, reason=reason)
        return self._bad(point, reason, tags, ts)

    def _sample(self, point: Point, value: Any, digits_oid: Oid | None, tags: tuple[tuple[str, str], ...],
                ts: int, state_oid: Oid | None = None) -> Sample | None:
        measurement = point.measurement or self.profile.kind
        if isinstance(value, _ABSENT):
            return self._bad(point, f"{_absent_name(value)} in row {tags}", tags, ts)
        state = self._states.get(state_oid) if state_oid is not None else None
        if state is not None and state in point.unavailable_states:
            return self._bad(point, f"sensor unavailable (state {state})", tags, ts)
        if isinstance(value, fast.Malformed):
            return self._bad(point, value.reason, tags, ts)
        if isinstance(value, bytes | bytearray | str | tuple) or value is None:
            # int(b"12") is 12: a string is never read as a number, whatever it holds.
            return self._bad(point, f"not an integer: {_shown(value)}", tags, ts)
        try:
            raw = int(value)
        except (TypeError, ValueError):
            return self._bad(point, f"not an integer: {_shown(value)}", tags, ts)
        if raw.bit_length() > MAX_RAW_BITS:
            return self._bad(point, f"integer of {raw.bit_length()} bits (at most {MAX_RAW_BITS})", tags, ts)
        if raw in point.missing:
            return None
        if point.enum is not None:
            text = point.enum.get(raw)
            if text is None:
                return Sample(self.device.id, point.name, None, ts, Quality.BAD, f"unknown value {raw}",
                              measurement, tags)
            return Sample(self.device.id, point.name, text, ts, Quality.GOOD, "", measurement, tags)
        digits = 0
        if digits_oid is not None:
            known = (self._digits or {}).get(digits_oid, point.digits)
            if known is None:
                return Sample(self.device.id, point.name, None, ts, Quality.BAD,
                              "decimal digits unknown (agent has no decimalDigits object)", measurement, tags)
            if known < 0:
                return self._bad(point, f"decimal digits at {_dotted(digits_oid)} are not 0..9", tags, ts)
            digits = known
        try:
            number = raw * point.scale / 10**digits if digits else raw * point.scale
            decimals = self.plan.decimals.get(id(point), 0) + digits
            # Always a float: one field keeps one type in InfluxDB, whatever the vendor's resolution.
            result = float(round(number, decimals))
        except (OverflowError, ValueError) as err:
            return self._bad(point, f"{raw} cannot be scaled: {err}", tags, ts)
        if not math.isfinite(result):
            return self._bad(point, f"{raw} x {point.scale:g} is not a finite number", tags, ts)
        return Sample(self.device.id, point.name, result, ts, Quality.GOOD, "", measurement, tags)

    # ---- writing -------------------------------------------------------------------------------------

    async def write(self, point: str, value: Value) -> None:
        """`write("outlet_command:7", "off")`; a scalar writable point is written by its plain name."""
        name, _, index_text = point.partition(":")
        if self.config.version != "3" and not self.config.write_community:
            # Never fall back on the read community: an agent that accepts it for SET would obey.
            raise WriteRejected(f"{self.device.id}: no write_community configured: SNMP writes are refused")
        target = self._writable(name, index_text)
        checked = target.check_write(value)
        if target.is_column:
            try:
                index = tuple(int(part) for part in index_text.split("."))
            except ValueError as err:
                raise WriteRejected(f"{name}: {index_text!r} is not a row index (e.g. {name}:7)") from err
            if any(part < 0 for part in index):
                raise WriteRejected(f"{name}: {index_text!r} is not a row index")
        else:
            index = ()
        if target.enum is not None:
            raw = target.raw_for(str(checked))
        else:
            if isinstance(checked, str):
                raise WriteRejected(f"{name}: {checked!r} is not a number")
            raw = round(float(checked) / target.scale * 10 ** (target.digits or 0))
        try:
            async with self._lock, asyncio.timeout(self.deadline):
                REQUESTS.inc(device=self.device.id, kind="set")
                await self._session().set(target.instance(index), raw, target.syntax)
        except TimeoutError as err:
            raise DeviceTimeout(f"{self.device.id}: write of {point} not answered within {self.deadline:g}s") from err

    def _writable(self, name: str, index_text: str) -> Point:
        candidates = [p for p in self.profile.points if p.name == name and p.writable is not False]
        if not candidates:
            self.profile.point(name)  # raises "no point" for an unknown name
            raise WriteRejected(f"point {name!r} is read-only")
        target: Point = candidates[0]
        if target.is_column and not index_text:
            raise WriteRejected(f"{name} addresses one {target.index_tag}: write {name}:<{target.index_tag}>, "
                                f"e.g. {name}:7")
        if not target.is_column and index_text:
            raise WriteRejected(f"{name} is not a table point: write it without ':{index_text}'")
        return target


def _digit_count(value: Any) -> int:
    """An agent's decimal digits as 0..9, or -1 for anything else (a string, a huge or negative number)."""
    if isinstance(value, bytes | bytearray | str | tuple | fast.Malformed) or value is None:
        return -1
    try:
        digits = int(value)
    except (TypeError, ValueError):
        return -1
    return digits if 0 <= digits <= 9 else -1


def _absent_name(value: Any) -> str:
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else type(value).__name__[:1].lower() + type(value).__name__[1:]


def _dotted(oid: Oid) -> str:
    return ".".join(map(str, oid))


def _shown(value: Any) -> str:
    """A value for a reason text, never longer than a line (an agent may send a 60 kB string)."""
    text = value.prettyPrint() if hasattr(value, "prettyPrint") else repr(value)
    return text if len(text) <= 64 else f"{text[:60]}... ({len(text)} chars)"


def make_driver(device: DeviceBase, profile: Profile[Any], context: DriverContext) -> Driver:
    if not isinstance(device, SnmpDevice):
        raise TypeError(f"{device.id}: not an SNMP device")
    if profile.protocol != "snmp":
        raise TypeError(f"{device.id}: profile {profile.name} is for {profile.protocol}, not snmp")
    return SnmpDriver(device, profile, context)
