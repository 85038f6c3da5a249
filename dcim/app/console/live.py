"""What the console shows, kept up to date in memory: the latest sample of every point and each device's
status (a pipeline sink, so it sees what the rules and MQTT see), and the hall's racks judged from those
samples and the active alarms.

The sink only stores references and sets an event: the pipeline calls it synchronously on every batch, so
it must cost next to nothing. Everything else (judging racks, comparing with what the browsers were last
sent) runs in the console's own task, at most a few times a second.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from dcim.core.samples import Batch, DeviceStatus, Layout, Quality, Sample, Value
from dcim.core.topology import RackPlace, Topology

# Utilization bands (power against the rack's budget, %): the hall's cell colours when no alarm speaks.
BANDS = ((90.0, "u3"), (75.0, "u2"), (50.0, "u1"), (0.0, "u0"))
SEVERITY_RANK = {"critical": 2, "warning": 1}


class AlarmLike(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]: ...
    @property
    def severity(self) -> Any: ...
    @property
    def suppressed(self) -> str: ...


# A point of one device: (measurement, row tags, point name). Scalars have no row tags.
PointKey = tuple[str, tuple[tuple[str, str], ...], str]


@dataclass(slots=True)
class Latest:
    """The latest sample of one point, what it carried, updated in place by the next one.

    Not the `Sample` itself: keeping every device's last samples would keep each poll's alive until the
    next, and young, so the garbage collector would walk all of them at every collection (at 21,500 CDUs,
    half a million objects and a quarter of a second each time, the event loop stopped meanwhile). A record
    per point, made once and then only written to, grows old and is left alone."""

    value: Value | None
    ts_ns: int
    quality: Quality
    reason: str
    measurement: str

    @property
    def ok(self) -> bool:
        return self.quality is Quality.GOOD and self.value is not None


@dataclass(slots=True)
class DeviceLive:
    device: str
    kind: str
    # (measurement, row tags) -> point -> its latest sample. Grouped so that a batch, whose samples mostly
    # share their measurement and tags, stores each sample by its name alone.
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Latest]]
    bad: int = 0  # BAD samples in the device's latest batch
    reason: str = ""  # the first BAD sample's reason in that batch
    status: DeviceStatus | None = None
    batch_ns: int = 0
    # The layout of the device's last laid-out batch (`Layout`), the records of its points in the layout's
    # order (each GOOD with no reason since that batch) and the groups they are in: the next batch laid out
    # the same writes only the values and times. Dropped by a batch of another kind that writes into one of
    # those groups (a batch of other groups, such as the plant's metrics of a CDU, leaves it).
    laid_out: tuple[Layout, list[Latest], frozenset[tuple[str, tuple[tuple[str, str], ...]]]] | None = None

    @property
    def samples(self) -> dict[PointKey, Sample]:
        """The latest sample of every point, by (measurement, row tags, point name)."""
        return {(measurement, tags, point): self.sample(point, latest, tags)
                for (measurement, tags), points in self.groups.items() for point, latest in points.items()}

    def group_samples(self, measurement: str | None = None) -> list[Sample]:
        """The latest samples of the device's points (of one measurement, if given)."""
        return [self.sample(point, latest, tags) for (meas, tags), points in self.groups.items()
                if measurement is None or meas == measurement for point, latest in points.items()]

    def sample(self, point: str, latest: Latest, tags: tuple[tuple[str, str], ...]) -> Sample:
        return Sample(self.device, point, latest.value, latest.ts_ns, latest.quality, latest.reason,
                      latest.measurement, tags)


class LiveState:
    """The pipeline sink (on_batch, on_status) behind every page."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceLive] = {}
        self.version = 0  # bumped by every batch and status: the console's task compares it
        self.on_change: list[Any] = []  # callables with no arguments (the console wakes its task)

    def on_batch(self, batch: Batch) -> None:
        if batch.kind == "alarm":
            # The rules service's record of an alarm change: the pages read alarms from the store.
            self._changed()
            return
        live = self.devices.get(batch.device)
        if live is None:
            live = self.devices[batch.device] = DeviceLive(batch.device, batch.kind, {})
        layout = batch.layout
        laid_out = live.laid_out
        if laid_out is not None and laid_out[0] is layout and len(batch.samples) == len(laid_out[1]):
            # As the last laid-out batch: the same points, GOOD again, in the same order.
            for kept, sample in zip(laid_out[1], batch.samples):  # noqa: B905 - the same length
                kept.value = sample.value
                kept.ts_ns = sample.ts_ns
            live.bad, live.reason, live.batch_ns = 0, "", batch.ts_ns
            self._changed()
            return
        shared = laid_out[2] if laid_out is not None else frozenset()
        touched = False  # whether this batch writes into a group of the laid-out points
        bad = 0
        reason = ""
        kind, groups, quality_bad = batch.kind, live.groups, Quality.BAD
        measurement: str | None = None
        tags: tuple[tuple[str, str], ...] | None = None
        points: dict[str, Latest] = {}
        for sample in batch.samples:
            if sample.measurement is not measurement or sample.tags is not tags:
                measurement, tags = sample.measurement, sample.tags
                key = (measurement or kind, tags)
                if key in shared:
                    touched = True
                found = groups.get(key)
                if found is None:
                    found = groups[key] = {}
                points = found
            latest = points.get(sample.point)
            if latest is None:
                points[sample.point] = Latest(sample.value, sample.ts_ns, sample.quality, sample.reason,
                                              sample.measurement)
            else:
                latest.value = sample.value
                latest.ts_ns = sample.ts_ns
                latest.quality = sample.quality
                latest.reason = sample.reason
                latest.measurement = sample.measurement
            if sample.quality is quality_bad:
                bad += 1
                reason = reason or sample.reason
        live.bad, live.reason, live.batch_ns = bad, reason, batch.ts_ns
        if layout is not None and len(batch.samples) == len(layout.points):
            keys = [(m or kind, ()) for m in layout.measurements]
            records = [groups[k][p] for k, p in zip(keys, layout.points, strict=True)]
            live.laid_out = (layout, records, frozenset(keys))
        elif touched:
            live.laid_out = None
        self._changed()

    def on_status(self, status: DeviceStatus) -> None:
        live = self.devices.get(status.device)
        if live is None:
            live = self.devices[status.device] = DeviceLive(status.device, status.kind, {})
        live.status = status
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        for wake in self.on_change:
            wake()

    def value(self, device: str, point: str, measurement: str | None = None) -> Any:
        """The latest good value of a scalar point, or None."""
        live = self.devices.get(device)
        if live is None:
            return None
        for (meas, tags), points in live.groups.items():
            latest = points.get(point)
            if latest is not None and not tags and (measurement is None or meas == measurement) and latest.ok:
                return latest.value
        return None


@dataclass(frozen=True, slots=True)
class RackView:
    """One cell of the hall."""

    id: str
    room: str
    row: str
    cooling: str
    budget_kw: float
    power_kw: float | None
    utilization_pct: float | None
    status: str  # critical | warning | ok | unknown
    band: str  # u0..u3 by utilization, "unk" without a reading
    coolant: str  # critical | warning | ok | none (air-cooled: no loop)
    alarms: int
    suppressed: int
    cdu: str

    def css(self) -> str:
        return f"rack s-{self.status} {self.band} c-{self.coolant}"

    def title(self) -> str:
        power = f"{self.power_kw:.1f} of {self.budget_kw:g} kW" if self.power_kw is not None else "no power reading"
        alarms = f", {self.alarms} alarm{'s' if self.alarms != 1 else ''}" if self.alarms else ""
        return f"{self.id}: {power}{alarms}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["css"] = self.css()
        out["title"] = self.title()
        return out


def rack_subjects(place: RackPlace) -> tuple[set[str], set[str]]:
    """(alarm subjects that count for the rack: itself, its feed PDUs and its CDU; those of its loop)."""
    rack = place.rack
    loop = {rack.cdu} if rack.cdu else set()
    subjects = {rack.id, *loop}
    for feed in (rack.feeds.a, rack.feeds.b):
        if feed is not None:
            subjects.add(feed.pdu)
    return subjects, loop


def worst(severities: Iterable[str]) -> str:
    best = "ok"
    for severity in severities:
        if SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK.get(best, 0):
            best = severity
    return best


def judge(topology: Topology, live: LiveState, alarms: Iterable[AlarmLike]) -> list[RackView]:
    """Every rack of the topology, in room, row and configuration order."""
    by_subject: dict[str, list[AlarmLike]] = {}
    for alarm in alarms:
        by_subject.setdefault(alarm.subject, []).append(alarm)
    out = []
    for rack_id, place in topology.racks.items():
        subjects, loop = rack_subjects(place)
        mine = [a for s in subjects for a in by_subject.get(s, ())]
        coolant_alarms = [a for a in mine if a.subject in loop or a.labels.get("category") == "coolant"]
        power = _number(live.value(rack_id, "power_kw", "rack"))
        utilization = _number(live.value(rack_id, "utilization_pct", "rack"))
        status = worst(str(a.severity) for a in mine)
        if status == "ok" and power is None:
            status = "unknown"
        out.append(RackView(
            id=rack_id, room=place.room, row=place.row, cooling=place.rack.cooling,
            budget_kw=place.rack.power_budget_kw, power_kw=power, utilization_pct=utilization, status=status,
            band=_band(utilization),
            coolant=worst(str(a.severity) for a in coolant_alarms) if place.rack.cdu else "none",
            alarms=len(mine), suppressed=sum(1 for a in mine if a.suppressed), cdu=place.rack.cdu or ""))
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _band(utilization: float | None) -> str:
    if utilization is None:
        return "unk"
    for floor, name in BANDS:
        if utilization >= floor:
            return name
    return "u0"


@dataclass(frozen=True, slots=True)
class DeviceView:
    id: str
    kind: str
    protocol: str
    status: str  # online | degraded | offline | unknown
    last_poll_ns: int  # the last successful poll (0: none yet)
    reason: str
    rack: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CoordinatorLike(Protocol):
    @property
    def online(self) -> bool | None: ...
    @property
    def last_error(self) -> str: ...
    @property
    def last_success_ns(self) -> int: ...
    def stale(self, now: float | None = None) -> bool: ...


def devices(configured: Iterable[Any], coordinators: Mapping[str, CoordinatorLike], live: LiveState,
            topology: Topology) -> list[DeviceView]:
    """Every configured device: online (its last poll answered and every point was good), degraded (it
    answered, but some points are bad, or no poll completed for three intervals), offline (its last poll
    failed), unknown (not polled yet, or disabled)."""
    out = []
    for device in configured:
        coordinator = coordinators.get(device.id)
        state = live.devices.get(device.id)
        reason = ""
        if coordinator is None:
            status, reason = "unknown", "disabled" if not device.enabled else "not polled"
            last = 0
        else:
            last = coordinator.last_success_ns
            if coordinator.online is None:
                status, reason = "unknown", "not polled yet"
            elif not coordinator.online:
                status, reason = "offline", coordinator.last_error or "no answer"
            elif coordinator.stale(time.monotonic()):
                status, reason = "degraded", "no poll completed for three intervals"
            elif state is not None and state.bad:
                status, reason = "degraded", f"{state.bad} bad point{'s' if state.bad != 1 else ''}: {state.reason}"
            else:
                status = "online"
        rack = dict(topology.tags(device.id)).get("rack", "")
        out.append(DeviceView(device.id, str(device.kind), str(getattr(device, "protocol", "")), status, last,
                              reason, rack))
    return out
