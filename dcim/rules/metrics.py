"""Derived rack metrics, from the latest good samples of the devices serving each rack.

Every tick, for each rack (measurement `rack`, device = rack id; absent inputs give a BAD sample with the
reason, or no sample when the rack lacks the equipment altogether, e.g. no feeds configured):

    power_a_kw, power_b_kw   the feed PDU's `power_w` / 1000
    power_kw                 sum of the configured feeds (BAD if one of them has no fresh value)
    utilization_pct          power_kw / power_budget_kw x 100
    feed_capacity_kw         smallest usable feed capacity: breaker_a x voltage_v x phases x 0.8 / 1000
                             (phases = 3: line-to-neutral voltage, so 32 A x 230 V x 3 x 0.8 = 17.7 kW)
    redundant_headroom_kw    (A and B feeds) the capacity left if the worse feed is lost:
                             min over feeds of (capacity if the feed is live, else 0) - power_kw.
                             A feed is not live when its PDU reports `tripped`, or when it carries less than
                             2 % of a rack drawing over 1 kW (its upstream is gone). So a tripped A feed
                             leaves headroom = -power_kw: the rack runs without redundancy.
    branch_load_pct          worst phase current / breaker_a x 100 over both feeds (from the PDU's phase
                             rows; without them, feed power / (voltage x phases x breaker) x 100)
    phase_imbalance_pct      worst feed's max |I - Iavg| / Iavg x 100; not computed for a feed whose Iavg
                             is under 0.5 A (the ratio means nothing at no load)
    flow_required_lpm        power_kw x flow_lpm_per_kw (1.5 L/min per kW by default); racks with a CDU only
    flow_delivered_lpm       the rack's share of its CDU's flow_lpm, proportional to power among the racks
                             of the loop (the CDU meters the loop, not each rack). So flow_ratio_pct is the
                             loop's ratio, the same for every rack of one loop.
    flow_ratio_pct           flow_delivered / flow_required x 100 (rack above 1 kW only)
    heat_removed_kw          the rack's power share of its CDU's heat_removed_kw
    heat_ratio_pct           heat_removed_kw / power_kw x 100 (what the liquid loop carries; the rest goes
                             to air)
    cooling_budget_kw        (racks with a CDU) the power budget the cooling supports now: power_budget_kw,
                             or rules.cooling.last_pump_budget_pct of it while the CDU runs on its last pump
                             (one pump of two or more still running: no redundancy left)
    cooled_utilization_pct   power_kw / cooling_budget_kw x 100 (liquid racks' budget rule)

Phase metrics use the PDU's `phase` rows only: the neutral of a wye inlet is its own point
(`neutral_current_a`), never a phase.

And for every CDU that answers (kind and measurement `plant`, device = the CDU: a device-scoped rule on
the CDU judges them like its own points, while the `cdu` measurement keeps only what the CDU reported):

    facility_supply_max_c        the site's ASHRAE liquid class maximum (W17 ... W45: 17 ... 45 degC)
    facility_setpoint_c          the lowest chilled-water setpoint_c among the site's chillers
    approach_k                   supply_temp_c - facility_supply_temp_c (the heat exchanger's approach)
    cooling_capacity_margin_kw   site-wide: capacity of the running chillers (rules.cooling.chiller_capacity_kw
                                 x demand_limit_pct) - the heat all CDUs remove. No running chiller: the
                                 capacity is 0, so any heat load makes it negative ("cooling capacity lost").
                                 A chiller counts as running only on a fresh `running` = true; a running
                                 chiller without a configured capacity is taken to carry the load (>= 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dcim.core.samples import Batch, Layout, Quality, Sample, Value
from dcim.core.topology import Feed, RackPlace, Topology

NS = 1_000_000_000
# ASHRAE liquid-cooling classes: the highest facility water supply temperature each allows (degC).
ASHRAE_CLASSES = {"W17": 17.0, "W27": 27.0, "W32": 32.0, "W40": 40.0, "W45": 45.0}
# Derived points of every CDU (kind and measurement `plant`): what `_plant_steps` writes.
PLANT = "plant"
CDU_METRICS = ("facility_supply_max_c", "facility_setpoint_c", "approach_k", "cooling_capacity_margin_kw")
MIN_IAVG_A = 0.5
# The running flags of a CDU's pumps, as profiles name them.
PUMPS = tuple(f"pump{n}_running" for n in range(1, 9))
DEAD_FEED_SHARE = 0.02
MIN_RACK_KW = 1.0


class CoolingSettings(Protocol):
    """The site's cooling plant as the metrics need it (rules.config.CoolingPlant, `rules.cooling`)."""

    @property
    def ashrae_class(self) -> str: ...
    @property
    def chiller_capacity_kw(self) -> Mapping[str, float]: ...
    @property
    def last_pump_budget_pct(self) -> float: ...


@dataclass(frozen=True)
class DefaultCooling:
    ashrae_class: str = "W32"
    chiller_capacity_kw: Mapping[str, float] = field(default_factory=dict)
    last_pump_budget_pct: float = 50.0


@dataclass(slots=True)
class Reading:
    """The latest good value of a point. The next good value of the same point updates it in place: a kind
    that keeps a value past the call it was handed in (`Condition.observe`) copies it, as the rate does."""

    value: Value
    ts_ns: int


@dataclass
class Readings:
    """Latest good value of every point of every subject (device or rack), and PDU table rows."""

    stale_after_ns: int
    points: dict[str, dict[str, Reading]] = field(default_factory=dict)
    # device -> (measurement, tags) -> point -> reading, for table rows (PDU phases, outlets).
    rows: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Reading]]] = field(
        default_factory=dict)
    offline: set[str] = field(default_factory=set)
    # Devices that push changes only (OPC UA subscriptions): a value holds until the device says otherwise
    # (a new value, a STALE/BAD sample, offline), however old it is; age says nothing about them.
    push: set[str] = field(default_factory=set)
    # device -> the layout of its last batch (`Layout`) and the readings of the layout's points in its order
    # (the very ones in `points`, which are only ever updated in place or withdrawn): the next batch laid out
    # the same, to a device no rule judges, writes their values and times in place (`Engine.on_batch`). A
    # batch of another kind that withdraws one of the device's values drops its entry (one that only brings
    # values, such as the plant's metrics of a CDU, leaves it), and so does `update`. A device the engine's
    # rules judge never has one: it is judged so for the engine's life (a reload makes a new engine, with
    # readings of its own).
    laid_out: dict[str, tuple[Layout, list[Reading]]] = field(default_factory=dict)

    def update(self, batch: Batch) -> list[str]:
        """Keep the batch's good values; returns the untagged points it carried (for rule evaluation)."""
        return self.update_changes(batch)[0]

    def update_changes(self, batch: Batch) -> tuple[list[str], set[str]]:
        """`update`, and of the points it carried those whose current value is not what it was: a new value
        (of another type, or unequal), one that was missing or had gone stale, or one withdrawn. (The rule
        engine does the same inline, in `Engine.on_batch`.)"""
        touched: list[str] = []
        changed: set[str] = set()
        self.laid_out.pop(batch.device, None)
        points = self.points.get(batch.device)
        if points is None:
            points = self.points[batch.device] = {}
        good = Quality.GOOD
        stale_after = self.stale_after_ns
        for sample in batch.samples:
            if sample.tags:
                self.keep_row(batch.device, batch.kind, sample)
                continue
            point = sample.point
            value = sample.value
            old = points.get(point)
            if sample.quality is good and value is not None:
                if old is None:
                    changed.add(point)
                    points[point] = Reading(value, sample.ts_ns)
                else:
                    if old.value != value or type(old.value) is not type(value) \
                            or sample.ts_ns - old.ts_ns > stale_after:
                        changed.add(point)
                    old.value = value
                    old.ts_ns = sample.ts_ns
            else:
                # A BAD or STALE sample withdraws the value: rules hold rather than judge old data.
                if old is not None:
                    changed.add(point)
                    del points[point]
            touched.append(point)
        return touched, changed

    def keep_row(self, device: str, kind: str, sample: Sample) -> None:
        """A table row's sample (PDU phases, outlets): kept by (measurement, row tags), withdrawn unless good."""
        row = self.rows.setdefault(device, {}).setdefault((sample.measurement or kind, sample.tags), {})
        if sample.quality is Quality.GOOD and sample.value is not None:
            row[sample.point] = Reading(sample.value, sample.ts_ns)
        else:
            row.pop(sample.point, None)

    def reading(self, subject: str, point: str, now_ns: int) -> Reading | None:
        if subject in self.offline:
            return None
        found = self.points.get(subject, {}).get(point)
        if found is None or (now_ns - found.ts_ns > self.stale_after_ns and subject not in self.push):
            return None
        return found

    def values(self, subject: str, points: Iterable[str], now_ns: int) -> list[Value]:
        """The fresh values of those of `points` the subject has (`reading` for each, the subject looked up
        once: the tick asks this of every CDU's eight pumps)."""
        if subject in self.offline:
            return []
        found = self.points.get(subject)
        if not found:
            return []
        oldest = None if subject in self.push else now_ns - self.stale_after_ns
        out: list[Value] = []
        for point in points:
            reading = found.get(point)
            if reading is not None and (oldest is None or reading.ts_ns >= oldest):
                out.append(reading.value)
        return out

    def number(self, subject: str, point: str, now_ns: int) -> float | None:
        # `reading`, inline: the rules ask this for most of their judgements.
        if subject in self.offline:
            return None
        points = self.points.get(subject)
        found = None if points is None else points.get(point)
        if found is None or (now_ns - found.ts_ns > self.stale_after_ns and subject not in self.push):
            return None
        value = found.value
        if isinstance(value, str):
            return None
        return float(value)

    def phase_currents(self, device: str, now_ns: int) -> list[float]:
        if device in self.offline:
            return []
        currents: list[float] = []
        for (measurement, tags), row in self.rows.get(device, {}).items():
            if measurement != "pdu" or not any(k == "phase" for k, _ in tags):
                continue
            current = row.get("current_a")
            if current is not None and now_ns - current.ts_ns <= self.stale_after_ns \
                    and not isinstance(current.value, str):
                currents.append(float(current.value))
        return currents


def feed_capacity_kw(feed: Feed) -> float:
    # 80 %: continuous load on a branch circuit is limited to 80 % of the breaker rating.
    return feed.breaker_a * feed.voltage_v * feed.phases * 0.8 / 1000.0


def _imbalance(currents: list[float]) -> float | None:
    if len(currents) < 2:
        return None
    mean = sum(currents) / len(currents)
    if mean < MIN_IAVG_A:
        return None
    return max(abs(i - mean) for i in currents) / mean * 100.0


class RackMetrics:
    def __init__(self, topology: Topology, readings: Readings, *, flow_lpm_per_kw: float = 1.5,
                 cooling: CoolingSettings | None = None) -> None:
        self.topology = topology
        self.readings = readings
        self.flow_lpm_per_kw = flow_lpm_per_kw
        self.cooling: CoolingSettings = cooling or DefaultCooling()
        self.class_max_c = ASHRAE_CLASSES[self.cooling.ashrae_class]
        self.chillers = [d for d, kind in topology.kinds.items() if kind == "chiller"]
        self.cdus = [d for d, kind in topology.kinds.items() if kind == "cdu"]
        self.loops: dict[str, list[str]] = {}
        for rack_id, place in topology.racks.items():
            if place.rack.cdu is not None:
                self.loops.setdefault(place.rack.cdu, []).append(rack_id)

    def compute(self, now_ns: int) -> list[Batch]:
        batches: list[Batch] = []
        for _ in self.compute_steps(now_ns, batches):
            pass
        return batches

    def compute_steps(self, now_ns: int, batches: list[Batch], chunk: int = 500) -> Iterator[None]:
        """`compute` in slices of about `chunk` racks (or CDUs), the batches appended to `batches`, a yield
        between slices: at 21,500 racks the whole took 0.25-0.6 s, the event loop stopped meanwhile. The
        readings are those of the moment each slice runs, every sample stamped `now_ns`."""
        pumps: dict[str, bool | None] = {}  # last_pump of each CDU, looked up once in this computation
        powers: dict[str, float | None] = {}
        out: dict[str, list[Sample]] = {}
        racks = list(self.topology.racks.items())
        for start in range(0, len(racks), chunk):
            for rack_id, place in racks[start:start + chunk]:
                samples, power = self._power(rack_id, place, now_ns)
                powers[rack_id] = power
                out[rack_id] = samples
            yield
        for start in range(0, len(racks), chunk):
            for rack_id, place in racks[start:start + chunk]:
                samples = out[rack_id]
                if place.rack.cdu is not None:
                    samples += self._coolant(rack_id, place.rack.cdu, powers, now_ns)
                    samples += self._cooled_budget(rack_id, place, powers.get(rack_id), now_ns, pumps)
                if samples:
                    batches.append(Batch(rack_id, "rack", now_ns, samples))
            yield
        yield from self._plant_steps(now_ns, batches, chunk)

    # ---- cooling plant ---------------------------------------------------------------------------------

    def last_pump(self, cdu: str, now: int) -> bool | None:
        """True while the CDU runs on one pump of two or more (None: its pumps are not known)."""
        states = self.readings.values(cdu, PUMPS, now)
        if len(states) < 2:
            return None
        return sum(1 for v in states if v in (True, 1, "true")) <= 1

    def _cooled_budget(self, rack_id: str, place: RackPlace, power: float | None, now: int,
                       pumps: dict[str, bool | None]) -> list[Sample]:
        cdu = place.rack.cdu
        assert cdu is not None
        derated = pumps[cdu] if cdu in pumps else pumps.setdefault(cdu, self.last_pump(cdu, now))
        budget = place.rack.power_budget_kw
        if derated:
            budget *= self.cooling.last_pump_budget_pct / 100.0
        out = [self._sample(rack_id, "cooling_budget_kw", budget, now)]
        out.append(self._sample(rack_id, "cooled_utilization_pct",
                                None if power is None else power / budget * 100.0, now, "rack power unknown"))
        return out

    def capacity_margin_kw(self, now: int) -> tuple[float | None, str]:
        heat = [self.readings.number(cdu, "heat_removed_kw", now) for cdu in self.cdus]
        known = [h for h in heat if h is not None]
        if not known:
            return None, "no fresh heat_removed_kw from any CDU"
        load = sum(known)
        capacity = 0.0
        unrated = False
        unknown: list[str] = []
        for chiller in self.chillers:
            running = self.readings.reading(chiller, "running", now)
            if running is None:
                unknown.append(chiller)
                continue
            if running.value not in (True, 1, "true"):
                continue
            rated = self.cooling.chiller_capacity_kw.get(chiller)
            if rated is None:
                # Capacity not configured: a running chiller is taken to carry the load (margin 0), so
                # only "no running chiller" is judged.
                unrated = True
                continue
            limit = self.readings.number(chiller, "demand_limit_pct", now)
            capacity += rated * (100.0 if limit is None else limit) / 100.0
        if unrated:
            return max(0.0, capacity - load), ""
        if unknown and capacity < load:
            # Never "lost" on a guess: a chiller that does not report may be running (its communication
            # alarm speaks for it).
            return None, f"running state unknown for {', '.join(unknown)}"
        return capacity - load, ""

    def _plant_steps(self, now: int, out: list[Batch], chunk: int) -> Iterator[None]:
        if not self.cdus:
            return
        setpoints = [v for ch in self.chillers if (v := self.readings.number(ch, "setpoint_c", now)) is not None]
        margin, why = self.capacity_margin_kw(now) if self.chillers else (None, "")
        for index, cdu in enumerate(self.cdus):
            if index % chunk == chunk - 1:
                yield
            # Derived samples of an offline CDU would read as proof of life: none until it answers.
            if cdu in self.readings.offline:
                continue
            samples = [Sample(cdu, "facility_supply_max_c", self.class_max_c, now, measurement=PLANT)]
            if setpoints:
                samples.append(Sample(cdu, "facility_setpoint_c", min(setpoints), now, measurement=PLANT))
            supply = self.readings.number(cdu, "supply_temp_c", now)
            facility = self.readings.number(cdu, "facility_supply_temp_c", now)
            if supply is not None and facility is not None:
                samples.append(Sample(cdu, "approach_k", round(supply - facility, 3), now, measurement=PLANT))
            if self.chillers:
                samples.append(Sample(cdu, "cooling_capacity_margin_kw", None if margin is None else round(margin, 3),
                                      now, Quality.GOOD if margin is not None else Quality.BAD, why,
                                      measurement=PLANT))
            out.append(Batch(cdu, PLANT, now, samples))

    def _sample(self, rack: str, point: str, value: float | None, now_ns: int, reason: str = "") -> Sample:
        if value is None:
            return Sample(rack, point, None, now_ns, Quality.BAD, reason or "inputs missing", "rack")
        return Sample(rack, point, round(value, 3), now_ns, measurement="rack")

    def _power(self, rack_id: str, place: RackPlace, now: int) -> tuple[list[Sample], float | None]:
        feeds = {side: f for side in ("a", "b") if (f := getattr(place.rack.feeds, side)) is not None}
        if not feeds:
            return [], None
        samples: list[Sample] = []
        kw: dict[str, float | None] = {}
        missing: list[str] = []
        for side, feed in feeds.items():
            watts = self.readings.number(feed.pdu, "power_w", now)
            kw[side] = None if watts is None else watts / 1000.0
            why = "" if watts is not None else f"feed {side} ({feed.pdu}): no fresh power_w"
            if why:
                missing.append(why)
            samples.append(self._sample(rack_id, f"power_{side}_kw", kw[side], now, why))
        reason = "; ".join(missing)
        total = None if missing else sum(v for v in kw.values() if v is not None)
        budget = place.rack.power_budget_kw
        samples.append(self._sample(rack_id, "power_kw", total, now, reason))
        samples.append(self._sample(rack_id, "utilization_pct",
                                    None if total is None else total / budget * 100.0, now, reason))
        capacities = {side: feed_capacity_kw(feed) for side, feed in feeds.items()}
        samples.append(self._sample(rack_id, "feed_capacity_kw", min(capacities.values()), now))
        if len(feeds) == 2:
            headroom = None
            if total is not None:
                live = {side: self._feed_live(feeds[side].pdu, kw[side], total, now) for side in feeds}
                headroom = min(capacities[s] if live[s] else 0.0 for s in feeds) - total
            samples.append(self._sample(rack_id, "redundant_headroom_kw", headroom, now, reason))
        loads: list[float] = []
        imbalances: list[float] = []
        for side, feed in feeds.items():
            currents = self.readings.phase_currents(feed.pdu, now)
            if currents:
                loads.append(max(currents) / feed.breaker_a * 100.0)
                imbalance = _imbalance(currents)
                if imbalance is not None:
                    imbalances.append(imbalance)
            elif kw[side] is not None:
                per_phase_kw = feed.voltage_v * feed.phases * feed.breaker_a / 1000.0
                loads.append((kw[side] or 0.0) / per_phase_kw * 100.0)
        if loads:
            samples.append(self._sample(rack_id, "branch_load_pct", max(loads), now))
        if imbalances:
            samples.append(self._sample(rack_id, "phase_imbalance_pct", max(imbalances), now))
        return samples, total

    def _feed_live(self, pdu: str, kw: float | None, total: float, now: int) -> bool:
        tripped = self.readings.reading(pdu, "tripped", now)
        if tripped is not None and tripped.value in (True, 1, "true", "tripped"):
            return False
        return not (kw is not None and total > MIN_RACK_KW and kw < DEAD_FEED_SHARE * total)

    def _coolant(self, rack_id: str, cdu: str, powers: dict[str, float | None], now: int) -> list[Sample]:
        power = powers.get(rack_id)
        if power is None:
            return []
        loop = self.loops[cdu]
        unknown = [r for r in loop if powers.get(r) is None]
        flow = self.readings.number(cdu, "flow_lpm", now)
        heat = self.readings.number(cdu, "heat_removed_kw", now)
        required = power * self.flow_lpm_per_kw
        out = [self._sample(rack_id, "flow_required_lpm", required, now)]
        if unknown:
            reason = f"power unknown for rack(s) {', '.join(unknown)} of loop {cdu}"
            share = None
        else:
            loop_kw = sum(powers[r] or 0.0 for r in loop)
            share = power / loop_kw if loop_kw > 0 else 1.0 / len(loop)
            reason = f"no fresh values from {cdu}"
        delivered = None if share is None or flow is None else flow * share
        removed = None if share is None or heat is None else heat * share
        out.append(self._sample(rack_id, "flow_delivered_lpm", delivered, now, reason))
        out.append(self._sample(rack_id, "heat_removed_kw", removed, now, reason))
        if power > MIN_RACK_KW:
            out.append(self._sample(rack_id, "flow_ratio_pct",
                                    None if delivered is None else delivered / required * 100.0, now, reason))
            out.append(self._sample(rack_id, "heat_ratio_pct",
                                    None if removed is None else removed / power * 100.0, now, reason))
        return out
