"""The rule engine: binds rules to their subjects, judges every new value, and runs the timers.

A rule bound to one subject (a rack or a device) is one alarm, keyed `{rule}/{subject}`. A sample is judged
as it arrives (so a leak fires within the batch that reports it); `tick()` computes the rack metrics and
re-judges every bound rule so that pending periods, clear delays and no-data timers run without new data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from dcim.core.events import AlarmState, Severity
from dcim.core.metrics import REGISTRY
from dcim.core.samples import Batch, DeviceStatus, Quality
from dcim.core.topology import Topology
from dcim.rules.alarms import NS, RANK, Timers, Timing, Verdict, step
from dcim.rules.clock import Clock
from dcim.rules.config import RulesConfig, effective_rules
from dcim.rules.kinds import RULE_KINDS, Condition, RuleBase, Subject, same_value
from dcim.rules.metrics import RackMetrics, Reading, Readings, feed_capacity_kw
from dcim.rules.store import AlarmRecord, AlarmStore

COMM_RULE = "device-offline"
GOOD = Quality.GOOD

log = structlog.get_logger(__name__)

KIND_ERRORS = REGISTRY.counter(
    "dcim_rule_kind_errors_total", "Rule evaluations that raised in the rule's kind (the alarm holds)", ("rule",)
)


@dataclass(eq=False, slots=True)
class Bound:
    """A rule bound to one subject: one alarm, judged by its kind's condition."""

    rule: RuleBase
    subject: str
    key: str
    condition: Condition[Any]
    timing: Timing
    labels: dict[str, str]
    judged_ns: int = -1
    # The last judgement found nothing wrong (a clear verdict, or no data) and left no alarm and no timer:
    # while that holds and no new value of its points arrives, a condition of a timeless kind cannot judge
    # otherwise, so the tick, and a batch that repeats its values, skip it (see `Engine._settled`).
    settled: bool = False
    timeless: bool = False  # the condition's kind is timeless (`Condition.timeless`), read once at binding
    observes: bool = False  # the condition takes each new value (`Condition.observes`), read once at binding


@dataclass(eq=False, slots=True)
class NoDataBound:
    """The `no_data` timer of a rule bound to one subject: an alarm of its own (`{rule}.no_data/{subject}`)."""

    rule: RuleBase
    subject: str
    key: str
    labels: dict[str, str]


# The verdict of a clear condition where nothing would keep its value (see `Engine.verdict`).
CLEAR = Verdict(None, None, None, "")


class Engine:
    def __init__(self, config: RulesConfig, topology: Topology, store: AlarmStore, clock: Clock,
                 on_event: Callable[[AlarmRecord], None], *, push: set[str] | None = None,
                 bind: bool = True) -> None:
        self.config = config
        self.topology = topology
        self.store = store
        self.clock = clock
        self.on_event = on_event
        self.readings = Readings(round(config.stale_after * NS), push=set(push or ()))
        self.metrics = RackMetrics(topology, self.readings, flow_lpm_per_kw=config.flow_lpm_per_kw,
                                   cooling=config.cooling)
        # rules.enabled false: no rule is bound, no alarm raised; rack metrics are still derived.
        self.rules = {rule.name: rule for rule in effective_rules(config)} if config.enabled else {}
        self.loop_fault_rules = {name for name, rule in self.rules.items() if rule.loop_fault}
        self.bound: list[Bound] = []
        self.nodata: list[NoDataBound] = []
        # subject -> point -> the bound rules a new value of that point judges again.
        self.by_point: dict[str, dict[str, list[Bound]]] = {}
        # subject -> the points a `no_data` timer watches (their last good time is kept in `last_good`).
        self.watched: dict[str, set[str]] = {}
        self.timers: dict[str, Timers] = {}
        # Last time each (subject, point) had a good value, for no-data rules.
        self.last_good: dict[tuple[str, str], int] = {}
        self.offline_since: dict[str, int] = {}
        self.evaluations = 0
        # Judgements skipped as settled: a timeless condition judged clear with no new value (by the tick), or
        # with the same values again (by a batch).
        self.skipped = 0
        # Alarms whose kind raised: logged once each, counted every time.
        self.failing: set[str] = set()
        if bind:
            for _ in self.binding():
                pass

    # ---- binding -----------------------------------------------------------------------------------------

    def binding(self, step: int = 2000) -> Iterator[None]:
        """Binds the rules to their subjects (made with `bind=False`), pausing after every `step` rules bound:
        a reload builds its engine between the event loop's turns while the running one goes on judging.
        Last, the alarm store's devices that were offline when this engine was made."""
        yield from self._bind(step)
        # A device that was offline when the daemon stopped stays offline until it answers: its
        # communication alarm keeps speaking for the alarms that depend on it.
        for record in self.store.records():
            if record.rule == COMM_RULE and record.state is AlarmState.FIRING:
                self.readings.offline.add(record.subject)
                self.offline_since[record.subject] = record.fired_ns or record.since_ns

    def _subjects(self, rule: RuleBase) -> list[str]:
        if rule.scope.racks is not None:
            sel = rule.scope.racks
            return [
                rack_id for rack_id, place in self.topology.racks.items()
                if (sel.cooling is None or place.rack.cooling == sel.cooling)
                and (sel.rooms is None or place.room in sel.rooms)
                and (sel.rows is None or place.row in sel.rows)
                and (sel.ids is None or rack_id in sel.ids)
            ]
        dev = rule.scope.devices
        assert dev is not None
        return [d for d, kind in self.topology.kinds.items()
                if (dev.kind is None or kind == dev.kind) and (dev.ids is None or d in dev.ids)]

    def labels(self, subject: str) -> dict[str, str]:
        labels = dict(self.topology.tags(subject))
        labels["subject"] = subject
        place = self.topology.racks.get(labels.get("rack", ""))
        if self.topology.kinds.get(subject) == "cdu":
            labels["cdu"] = subject
        elif place is not None and place.rack.cdu:
            labels["cdu"] = place.rack.cdu
        return labels

    def _attributes(self, subject: str) -> dict[str, float | None]:
        """What thresholds can name besides the subject's points: a rack's budget and feed ratings."""
        place = self.topology.racks.get(subject)
        if place is None:
            return {}
        attributes: dict[str, float | None] = {"power_budget_kw": place.rack.power_budget_kw}
        feeds = [f for f in (place.rack.feeds.a, place.rack.feeds.b) if f is not None]
        if feeds:
            attributes["feed_capacity_kw"] = min(feed_capacity_kw(f) for f in feeds)
            attributes["breaker_a"] = min(f.breaker_a for f in feeds)
        return attributes

    def _bind(self, step: int) -> Iterator[None]:
        subjects: dict[str, Subject] = {}
        subject_labels: dict[str, dict[str, str]] = {}
        count = 0
        for rule in self.rules.values():
            kind = RULE_KINDS.get(rule.kind)
            for subject in self._subjects(rule):
                tuned = rule.tuned(rule.overrides.get(subject))
                if not tuned.enabled:
                    continue
                if subject not in subjects:
                    subjects[subject] = Subject(subject, self.readings, self._attributes(subject))
                    subject_labels[subject] = self.labels(subject)  # once a subject, for its every rule
                labels = {**subject_labels[subject], "rule": rule.name, "category": rule.category}
                timing = Timing(round(tuned.for_ * NS), round(tuned.clear_after * NS))
                try:
                    condition = kind.condition(tuned, subjects[subject])
                except Exception:
                    # A kind that cannot take this rule costs this rule, never the engine.
                    KIND_ERRORS.inc(rule=rule.name)
                    log.exception("rule kind failed to bind; rule not judged", rule=rule.name, subject=subject)
                    continue
                bound = Bound(tuned, subject, f"{rule.name}/{subject}", condition, timing, labels,
                              timeless=condition.timeless, observes=condition.observes)
                self.bound.append(bound)
                points = condition.points()
                if rule.only_if is not None:
                    points.add(rule.only_if.point)
                by_point = self.by_point.setdefault(subject, {})
                for point in points:
                    by_point.setdefault(point, []).append(bound)
                if tuned.no_data is not None:
                    self.watched.setdefault(subject, set()).add(tuned.metric)
                    self.nodata.append(NoDataBound(tuned, subject, f"{rule.name}.no_data/{subject}",
                                                   {**labels, "rule": f"{rule.name}.no_data"}))
                count += 1
                if count % step == 0:
                    yield

    # ---- input -------------------------------------------------------------------------------------------

    def on_batch(self, batch: Batch) -> None:
        if batch.kind == "alarm":
            return
        now = self.clock.now_ns()
        device = batch.device
        readings = self.readings
        returning = device in readings.offline
        if returning and any(s.ok for s in batch.samples):
            # Good data is proof of life, whatever the order status and samples arrive in.
            self._set_online(device, True, now)
        # One pass over the samples: keep each good value (`Readings.update`, inline, with what changed) and
        # gather the bound rules its point judges. A reading is updated in place (`Reading`).
        points = readings.points.get(device)
        if points is None:
            points = readings.points[device] = {}
        by_point = self.by_point.get(device)
        watched = self.watched.get(device)
        good = GOOD
        if by_point is None and watched is None:
            # No rule judges this device's points (a meter that no rule names, or rules off): its readings
            # are only kept (for the racks' metrics and the API), in a pass that asks nothing else.
            layout = batch.layout
            laid_out = readings.laid_out.get(device)
            if laid_out is not None and laid_out[0] is layout and len(batch.samples) == len(laid_out[1]):
                # As the last laid-out batch: the same points, good again, in the same order (`Layout`).
                for kept, sample in zip(laid_out[1], batch.samples):  # noqa: B905 - the same length
                    kept.value = sample.value  # type: ignore[assignment] # a layout's samples have values
                    kept.ts_ns = sample.ts_ns
                return
            withdrawn = False
            for sample in batch.samples:
                if sample.tags:
                    readings.keep_row(device, batch.kind, sample)
                    continue
                value = sample.value
                if sample.quality is good and value is not None:
                    old = points.get(sample.point)
                    if old is None:
                        points[sample.point] = Reading(value, sample.ts_ns)
                    else:
                        old.value = value
                        old.ts_ns = sample.ts_ns
                elif points.pop(sample.point, None) is not None:  # a BAD or STALE sample withdraws the value
                    withdrawn = True
            if layout is not None and len(batch.samples) == len(layout.points):
                readings.laid_out[device] = (layout, [points[p] for p in layout.points])
            elif withdrawn and laid_out is not None:
                # A reading of the laid-out points may be gone: they are looked up again at the next one.
                del readings.laid_out[device]
            return
        stale_after = readings.stale_after_ns
        # The bound rules to judge, in the order their points came, each with whether one of its points has a
        # new value (True) or only repeats its value (False).
        due: dict[Bound, bool] = {}
        for sample in batch.samples:
            if sample.tags:
                readings.keep_row(device, batch.kind, sample)
                continue
            point = sample.point
            value = sample.value
            old = points.get(point)
            # The bound rules this point judges: whether its value is new is worked out only for them.
            bounds = None if by_point is None else by_point.get(point)
            reading: Reading | None
            if sample.quality is good and value is not None:
                ts_ns = sample.ts_ns
                if old is None:
                    new = True
                    reading = points[point] = Reading(value, ts_ns)
                else:
                    if bounds is not None:
                        new = old.value != value or type(old.value) is not type(value) \
                            or ts_ns - old.ts_ns > stale_after
                    old.value = value
                    old.ts_ns = ts_ns
                    reading = old
                if watched is not None and point in watched:
                    self.last_good[(device, point)] = ts_ns
            else:
                # A BAD or STALE sample withdraws the value: rules hold rather than judge old data.
                reading = None
                new = old is not None
                if new:
                    del points[point]
            if bounds is None:
                continue
            renewed = new or returning
            for bound in bounds:
                if bound.observes and reading is not None:
                    bound.condition.observe(point, reading)
                if renewed:
                    due[bound] = True
                elif bound not in due:
                    due[bound] = False
        for bound, fresh in due.items():
            if not fresh and not bound.observes and self._settled(bound):
                # Judged clear (or without data) on these very values: it would find the same again. A kind
                # that observes (a rate) takes each value into its history: judged every time.
                self.skipped += 1
                continue
            self._judge(bound, now)

    def on_status(self, status: DeviceStatus) -> None:
        self._set_online(status.device, status.online, self.clock.now_ns(), status.error)

    def _set_online(self, device: str, online: bool, now: int, error: str = "") -> None:
        if online:
            self.readings.offline.discard(device)
            self.offline_since.pop(device, None)
        else:
            self.readings.offline.add(device)
            self.offline_since.setdefault(device, now)
        self._judge_comm(device, now, error)

    # ---- timers ------------------------------------------------------------------------------------------

    def rack_batches(self) -> list[Batch]:
        return self.metrics.compute(self.clock.now_ns())

    def rack_batch_steps(self, batches: list[Batch]) -> Iterator[None]:
        """`rack_batches` in slices (`RackMetrics.compute_steps`), appended to `batches`."""
        return self.metrics.compute_steps(self.clock.now_ns(), batches)

    def tick(self, since_ns: int | None = None) -> None:
        """Re-judge everything: pending periods, clear delays, no-data and offline timers. Rules judged
        at or after `since_ns` (the rack rules, on this tick's rack metrics) are not judged again."""
        for _ in self.tick_steps(since_ns):
            pass

    def tick_steps(self, since_ns: int | None = None, chunk: int = 500) -> Iterator[None]:
        """`tick` in slices of `chunk` judgements, so the service can yield to the loop between them."""
        now = self.clock.now_ns()
        since = now if since_ns is None else since_ns
        judge, timers, record = self._judge, self.timers, self.store.record
        bounds = self.bound
        for start in range(0, len(bounds), chunk):
            skipped = 0
            for bound in bounds[start:start + chunk]:
                if bound.judged_ns >= since:
                    continue
                # `_settled`, inline: the tick asks it of every bound rule.
                if bound.settled and bound.timeless and bound.key not in timers and record(bound.key) is None:
                    # Judged clear on its last values and none has come since: judging again would find
                    # the same (a new value, or the device going offline, judges it at once).
                    skipped += 1
                else:
                    judge(bound, now)
            self.skipped += skipped
            if start + chunk < len(bounds):
                yield
        for watch in self.nodata:
            self._judge_nodata(watch, now)
        for device in list(self.offline_since):
            self._judge_comm(device, now)
        yield

    def recovering(self, key: str) -> bool:
        """The alarm's condition is clear and it waits out its clear delay."""
        timers = self.timers.get(key)
        return timers is not None and timers.clear_since is not None

    # ---- judging -----------------------------------------------------------------------------------------

    def _settled(self, bound: Bound) -> bool:
        """Judged clear (or without data) last time, no alarm and no timer since, and of a timeless kind: on
        the same values its condition finds the same, so the tick and a batch that repeats them skip it.
        (`tick_steps` has the same test inline.)"""
        return bound.settled and bound.timeless and bound.key not in self.timers \
            and self.store.record(bound.key) is None

    def verdict(self, bound: Bound, now: int, current: Severity | None, *, quiet: bool = False) -> Verdict | None:
        """The rule's kind judges its condition; hysteresis is applied here, the same for every kind.
        `quiet`: nothing would keep a clear verdict's value and threshold (no alarm record, no timer), so a
        clear verdict is the shared `CLEAR`."""
        rule = bound.rule
        if rule.only_if is not None:
            gate = self.readings.reading(bound.subject, rule.only_if.point, now)
            if gate is None:
                return None
            if not any(same_value(gate.value, wanted) for wanted in rule.only_if.match):
                if quiet:
                    return CLEAR  # nothing would keep the message
                text = f"{bound.subject}: {rule.only_if.point} = {gate.value}: {rule.name} not judged"
                return Verdict(None, None, None, text)
        try:
            assessment = bound.condition.assess(now)
            if assessment is None:
                return None
            shown = None
            for severity, excess, threshold in assessment.levels:
                # Once at this severity (or above), the value must come back past it by `hysteresis`.
                margin = rule.hysteresis if RANK[current] >= RANK[severity] else 0.0
                if excess > -margin:
                    return Verdict(severity, assessment.value, threshold,
                                   bound.condition.describe(assessment, severity, threshold))
                if threshold is not None:
                    shown = threshold
        except Exception:
            # A bug in a kind (an installed one, say) judges nothing: this alarm holds, every other rule goes on.
            KIND_ERRORS.inc(rule=rule.name)
            if bound.key not in self.failing:
                self.failing.add(bound.key)
                log.exception("rule kind failed; the alarm holds", alarm=bound.key, kind=rule.kind)
            return None
        if quiet:
            return CLEAR
        return Verdict(None, assessment.value, shown, "")  # a clear verdict's message is never shown

    def _judge(self, bound: Bound, now: int) -> None:
        self.evaluations += 1
        bound.judged_ns = now
        record = self.store.record(bound.key)
        if record is None and bound.key not in self.timers:
            # The common case: nothing wrong, nothing pending. A clear verdict (or none) changes nothing, so
            # the kind is asked only whether it is clear; the full verdict is made when it is not (or when
            # asking raised: the verdict reports the kind's failure).
            if bound.rule.only_if is None:
                try:
                    clear = bound.condition.clear(now)
                except Exception:
                    clear = False
                if clear is not False:
                    bound.settled = True
                    return
            verdict = self.verdict(bound, now, None, quiet=True)
            bound.settled = verdict is None or verdict.severity is None
            if bound.settled:
                return
        else:
            current = record.severity if record is not None and record.state is AlarmState.FIRING else None
            verdict = self.verdict(bound, now, current)
            bound.settled = False
        if verdict is None:
            return  # no data: hold
        self._apply(bound.key, bound.rule.name, bound.subject, bound.rule.metric, bound.labels, record,
                    verdict, bound.timing, now)

    def _judge_nodata(self, bound: NoDataBound, now: int) -> None:
        assert bound.rule.no_data is not None
        last = self.last_good.get((bound.subject, bound.rule.metric))
        if last is not None and bound.subject in self.readings.push \
                and self.readings.reading(bound.subject, bound.rule.metric, now) is not None:
            last = now  # an unchanged value of a push device is a current value
        if last is None:
            # Never seen in this run: a metric the subject does not have, or a device that never
            # answered (the communication alarm covers that).
            return
        silent = now - last
        after_ns = round(bound.rule.no_data.after * NS)
        if silent < after_ns and bound.key not in self.timers and self.store.record(bound.key) is None:
            return  # the common case, as `_apply` has it: data comes, nothing wrong, nothing pending
        severity = bound.rule.no_data.severity if silent >= after_ns else None
        text = f"{bound.subject}: no data for {bound.rule.metric} for {silent / NS:.0f} s"
        verdict = Verdict(severity, silent / NS, bound.rule.no_data.after, text)
        self._apply(bound.key, f"{bound.rule.name}.no_data", bound.subject, bound.rule.metric, bound.labels,
                    self.store.record(bound.key), verdict, Timing(0, 0), now)

    def _judge_comm(self, device: str, now: int, error: str = "") -> None:
        comm = self.config.communication
        if not comm.enabled or not self.config.enabled:
            return
        since = self.offline_since.get(device)
        key = f"{COMM_RULE}/{device}"
        record = self.store.record(key)
        if since is None and record is None:
            return
        text = f"{device}: not answering" + (f" ({error})" if error else "")
        if record is not None and not error and since is not None:
            text = record.message
        verdict = Verdict(comm.severity if since is not None else None, None, None, text)
        labels = {**self.labels(device), "rule": COMM_RULE, "category": "communication"}
        self._apply(key, COMM_RULE, device, "online", labels, record, verdict,
                    Timing(round(comm.for_ * NS), 0), now)

    def _apply(self, key: str, rule: str, subject: str, metric: str, labels: dict[str, str],
               record: AlarmRecord | None, verdict: Verdict, timing: Timing, now: int) -> None:
        if record is None and verdict.severity is None and key not in self.timers:
            return  # the common case: nothing wrong, nothing pending
        timers = self.timers.setdefault(key, Timers())

        def fresh() -> AlarmRecord:
            return AlarmRecord(key, rule, subject, AlarmState.PENDING, verdict.severity or Severity.WARNING,
                               metric=metric, labels=dict(labels))

        kept, announce = step(record, timers, verdict, timing, now, fresh)
        if kept is None:
            if record is not None:
                self.store.forget(key)
            self.timers.pop(key, None)
            return
        if announce:
            kept.labels["severity"] = str(kept.severity)
            self.on_event(kept)
            self.store.put(kept, history=True)
            if kept.state is AlarmState.RESOLVED:
                self.store.forget(key)
                self.timers.pop(key, None)
        elif kept is not record:
            self.store.put(kept)
