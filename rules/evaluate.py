"""The rule engine: binds rules to their subjects, judges every new value, and runs the timers.

A rule bound to one subject (a rack or a device) is one alarm, keyed `{rule}/{subject}`. A sample is judged
as it arrives (so a leak fires within the batch that reports it); `tick()` computes the rack metrics and
re-judges every bound rule so that pending periods, clear delays and no-data timers run without new data.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dcim.core.events import AlarmState, Severity
from dcim.core.samples import Batch, DeviceStatus, Value
from dcim.core.topology import Topology
from rules.alarms import NS, RANK, Timers, Timing, Verdict, step
from rules.clock import Clock
from rules.config import Rule, RulesConfig, effective_rules
from rules.metrics import RackMetrics, Readings, feed_capacity_kw
from rules.model import Threshold
from rules.store import AlarmRecord, AlarmStore

COMM_RULE = "device-offline"


@dataclass(eq=False)
class Bound:
    rule: Rule
    subject: str
    key: str
    thresholds: dict[Severity, Threshold]
    timing: Timing
    labels: dict[str, str]
    # (ts_ns, value) of the metric, for rate rules.
    history: deque[tuple[int, float]] = field(default_factory=deque)
    judged_ns: int = -1


def _same(value: Value, wanted: Value) -> bool:
    if isinstance(value, str) or isinstance(wanted, str):
        return str(value).lower() == str(wanted).lower()
    return float(value) == float(wanted)


class Engine:
    def __init__(self, config: RulesConfig, topology: Topology, store: AlarmStore, clock: Clock,
                 on_event: Callable[[AlarmRecord], None], *, push: set[str] | None = None) -> None:
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
        self.nodata: list[Bound] = []
        self.by_point: dict[tuple[str, str], list[Bound]] = {}
        self.timers: dict[str, Timers] = {}
        # Last time each (subject, point) had a good value, for no-data rules.
        self.last_good: dict[tuple[str, str], int] = {}
        self.offline_since: dict[str, int] = {}
        self.evaluations = 0
        self._bind()
        # A device that was offline when the daemon stopped stays offline until it answers: its
        # communication alarm keeps speaking for the alarms that depend on it.
        for record in store.records():
            if record.rule == COMM_RULE and record.state is AlarmState.FIRING:
                self.readings.offline.add(record.subject)
                self.offline_since[record.subject] = record.fired_ns or record.since_ns

    # ---- binding -----------------------------------------------------------------------------------------

    def _subjects(self, rule: Rule) -> list[str]:
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

    def _bind(self) -> None:
        for rule in self.rules.values():
            for subject in self._subjects(rule):
                tuned = rule.tuned(rule.overrides.get(subject))
                if not tuned.enabled:
                    continue
                labels = {**self.labels(subject), "rule": rule.name, "category": rule.category}
                timing = Timing(round(tuned.for_ * NS), round(tuned.clear_after * NS))
                bound = Bound(tuned, subject, f"{rule.name}/{subject}", tuned.thresholds(), timing, labels)
                self.bound.append(bound)
                points = {rule.metric} | {t.ref for t in bound.thresholds.values() if t.ref}
                if rule.only_if is not None:
                    points.add(rule.only_if.point)
                for point in points:
                    self.by_point.setdefault((subject, point), []).append(bound)
                if tuned.no_data is not None:
                    nd_timing = Timing(round(tuned.no_data.after * NS), 0)
                    self.nodata.append(Bound(tuned, subject, f"{rule.name}.no_data/{subject}", {}, nd_timing,
                                             {**labels, "rule": f"{rule.name}.no_data"}))

    # ---- input -------------------------------------------------------------------------------------------

    def on_batch(self, batch: Batch) -> None:
        if batch.kind == "alarm":
            return
        now = self.clock.now_ns()
        if batch.device in self.readings.offline and any(s.ok for s in batch.samples):
            # Good data is proof of life, whatever the order status and samples arrive in.
            self._set_online(batch.device, True, now)
        touched = self.readings.update(batch)
        due: dict[int, Bound] = {}
        points = self.readings.points.get(batch.device, {})
        for point in touched:
            reading = points.get(point)
            if reading is not None:
                self.last_good[(batch.device, point)] = reading.ts_ns
            for bound in self.by_point.get((batch.device, point), ()):
                if bound.rule.kind == "rate" and point == bound.rule.metric and reading is not None \
                        and not isinstance(reading.value, str):
                    self._remember(bound, reading.ts_ns, float(reading.value))
                due[id(bound)] = bound
        for bound in due.values():
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

    def tick(self, since_ns: int | None = None) -> None:
        """Re-judge everything: pending periods, clear delays, no-data and offline timers. Rules judged
        at or after `since_ns` (the rack rules, on this tick's rack metrics) are not judged again."""
        for _ in self.tick_steps(since_ns):
            pass

    def tick_steps(self, since_ns: int | None = None, chunk: int = 500) -> Iterator[None]:
        """`tick` in slices of `chunk` judgements, so the service can yield to the loop between them."""
        now = self.clock.now_ns()
        since = now if since_ns is None else since_ns
        for i, bound in enumerate(self.bound):
            if bound.judged_ns < since:
                self._judge(bound, now)
            if i % chunk == chunk - 1:
                yield
        for bound in self.nodata:
            self._judge_nodata(bound, now)
        for device in list(self.offline_since):
            self._judge_comm(device, now)
        yield

    def recovering(self, key: str) -> bool:
        """The alarm's condition is clear and it waits out its clear delay."""
        timers = self.timers.get(key)
        return timers is not None and timers.clear_since is not None

    # ---- judging -----------------------------------------------------------------------------------------

    def _remember(self, bound: Bound, ts_ns: int, value: float) -> None:
        if bound.history and ts_ns <= bound.history[-1][0]:
            return
        bound.history.append((ts_ns, value))
        horizon = ts_ns - round(bound.rule.window * NS)
        while len(bound.history) > 2 and bound.history[1][0] <= horizon:
            bound.history.popleft()

    def _lookup(self, subject: str, now: int) -> Callable[[str], float | None]:
        place = self.topology.racks.get(subject)

        def lookup(name: str) -> float | None:
            if place is not None:
                feeds = [f for f in (place.rack.feeds.a, place.rack.feeds.b) if f is not None]
                if name == "power_budget_kw":
                    return place.rack.power_budget_kw
                if name == "feed_capacity_kw" and feeds:
                    return min(feed_capacity_kw(f) for f in feeds)
                if name == "breaker_a" and feeds:
                    return min(f.breaker_a for f in feeds)
            return self.readings.number(subject, name, now)

        return lookup

    def _value(self, bound: Bound, now: int) -> float | None:
        if bound.rule.kind != "rate":
            return self.readings.number(bound.subject, bound.rule.metric, now)
        history = bound.history
        if len(history) < 2 or now - history[-1][0] > self.readings.stale_after_ns:
            return None
        (t0, v0), (t1, v1) = history[0], history[-1]
        # Less than half a window of data says little about the rate over the window.
        if t1 - t0 < bound.rule.window * NS / 2:
            return None
        return (v1 - v0) / ((t1 - t0) / NS) * bound.rule.per

    def verdict(self, bound: Bound, now: int, current: Severity | None) -> Verdict | None:
        rule = bound.rule
        if rule.only_if is not None:
            gate = self.readings.reading(bound.subject, rule.only_if.point, now)
            if gate is None:
                return None
            if not any(_same(gate.value, wanted) for wanted in rule.only_if.match):
                text = f"{bound.subject}: {rule.only_if.point} = {gate.value}: {rule.name} not judged"
                return Verdict(None, None, None, text)
        if rule.kind == "state":
            reading = self.readings.reading(bound.subject, rule.metric, now)
            if reading is None:
                return None
            hit = any(_same(reading.value, wanted) for wanted in rule.match or ())
            number = None if isinstance(reading.value, str) else float(reading.value)
            text = f"{bound.subject}: {rule.description or rule.name} ({rule.metric} = {reading.value})"
            return Verdict(rule.severity if hit else None, number, None, text)
        value = self._value(bound, now)
        if value is None:
            return None
        lookup = self._lookup(bound.subject, now)
        resolved = {sev: t.resolve(lookup) for sev, t in bound.thresholds.items()}
        if all(v is None for v in resolved.values()):
            return None
        above = rule.when == "above"
        for severity in (Severity.CRITICAL, Severity.WARNING):
            limit = resolved.get(severity)
            if limit is None:
                continue
            margin = rule.hysteresis if RANK[current] >= RANK[severity] else 0.0
            if (value > limit - margin) if above else (value < limit + margin):
                what = "rate of " + rule.metric if rule.kind == "rate" else rule.metric
                text = (f"{bound.subject}: {rule.description or rule.name}: {what} {value:.4g} "
                        f"{'>' if above else '<'} {limit:.4g} ({bound.thresholds[severity]})")
                return Verdict(severity, value, limit, text)
        shown = resolved.get(Severity.WARNING)
        if shown is None:
            shown = resolved.get(Severity.CRITICAL)
        return Verdict(None, value, shown, "")  # a clear verdict's message is never shown

    def _judge(self, bound: Bound, now: int) -> None:
        self.evaluations += 1
        bound.judged_ns = now
        record = self.store.record(bound.key)
        current = record.severity if record is not None and record.state is AlarmState.FIRING else None
        verdict = self.verdict(bound, now, current)
        if verdict is None:
            return  # no data: hold
        self._apply(bound.key, bound.rule.name, bound.subject, bound.rule.metric, bound.labels, record,
                    verdict, bound.timing, now)

    def _judge_nodata(self, bound: Bound, now: int) -> None:
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
