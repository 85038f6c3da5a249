"""The rule engine as the daemon runs it: the pipeline's first sink, a tick loop, the alarm outlets.

    service = RuleService(config, topology, controller=daemon, publish=pipeline.publish,
                          alarm_outlet=publisher_or_None, notifier=notifier_or_None, clock=SystemClock())
    pipeline.add_sink(service.sink)     # first: rules see samples before MQTT does
    await service.run()                 # until cancelled: rack metrics, timers, control, store flushes
    service.store                       # the alarm store (HTTP API, `dcim alarms`)

Every alarm state change goes to: the store (state + history), `publish` as a Batch of kind `alarm`
(measurement `alarm` in the database), `alarm_outlet.alarm_changed` (retained MQTT topic), and the
notifier unless held back (rules.inhibit), and the control actions. Operator changes (ack, shelve) go to
the outlet; acknowledgements of notified alarms also to the notifier (which stops the reminders).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from dcim.core import collector
from dcim.core.events import AlarmEvent, AlarmState, Severity
from dcim.core.metrics import REGISTRY
from dcim.core.samples import Batch, DeviceStatus, Sample
from dcim.core.sqlite import SqliteWriter
from dcim.core.topology import Topology
from dcim.rules.clock import Clock, SystemClock
from dcim.rules.control import ControlActions, Controller
from dcim.rules.evaluate import COMM_RULE, Engine
from dcim.rules.inhibit import Silencer
from dcim.rules.store import DISK_ERRORS, AlarmRecord, AlarmStore

if TYPE_CHECKING:
    from dcim.rules.config import RulesSite

log = structlog.get_logger(__name__)

TICK_SECONDS = REGISTRY.summary("dcim_rules_tick_seconds", "Rule engine tick duration")
EVENTS = REGISTRY.counter("dcim_alarm_events_total", "Alarm state changes", ("state", "severity"))
FIRING = REGISTRY.gauge("dcim_alarms_firing", "Alarms firing now", ("severity",))
ERRORS = REGISTRY.counter("dcim_rules_errors_total", "Rule engine errors", ("where",))
BOUND = REGISTRY.gauge("dcim_rules_bound", "Rule instances the engine judges (a rule on one subject each)")


class AlarmOutlet(Protocol):
    def alarm_changed(self, event: AlarmEvent) -> None: ...


class AlarmNotifier(Protocol):
    def submit(self, event: AlarmEvent) -> None: ...


class _Sink:
    def __init__(self, service: RuleService) -> None:
        self._service = service

    def on_batch(self, batch: Batch) -> None:
        self._service.engine.on_batch(batch)

    def on_status(self, status: DeviceStatus) -> None:
        self._service.engine.on_status(status)


class RuleService:
    def __init__(self, config: RulesSite, topology: Topology, *, controller: Controller | None = None,
                 publish: Callable[[Batch], None] | None = None, alarm_outlet: AlarmOutlet | None = None,
                 notifier: AlarmNotifier | None = None, clock: Clock | None = None,
                 writer: SqliteWriter | None = None) -> None:
        self.config = config.rules
        self.topology = topology
        self.clock: Clock = clock or SystemClock()
        self.publish = publish
        # Public: the daemon may create its publisher after the service and set it here.
        self.alarm_outlet = alarm_outlet
        self.notifier = notifier
        # `writer`: the process's SQLite writer (the daemon's); the store makes its own without.
        self.store = AlarmStore(Path(config.state_dir) / self.config.store, clock=self.clock, writer=writer)
        push = {d.id for d in config.devices if getattr(d, "mode", "poll") == "subscribe"}
        self.engine = Engine(self.config, topology, self.store, self.clock, self._on_event, push=push)
        BOUND.set(len(self.engine.bound))
        self.silencer = Silencer(topology, self.store, self.engine.loop_fault_rules, COMM_RULE,
                                 self.engine.readings.offline)
        self.control = ControlActions(self.config.control, topology, self.store, self.engine.readings,
                                      self.clock, controller, state_dir=Path(config.state_dir))
        self.sink = _Sink(self)
        self.store.on_change = self._on_operator
        self._control_tasks: set[asyncio.Task[None]] = set()
        self._store_failing = False
        REGISTRY.add_collector(self._collect)
        if self.config.control.armed:
            log.warning("control actions are ARMED", actions=[a.name for a in self.config.control.actions])

    def reload(self, config: RulesSite, topology: Topology) -> None:
        """A new configuration (the daemon's SIGHUP): rules, topology and control actions are rebuilt on the
        same alarm store, so alarm state (firing, acknowledged, shelved, history) carries over exactly as it
        does across a restart. Control commands already on their way finish. The rules are bound with the
        garbage collector held off (`collector.paused`), as at start."""
        with collector.paused():
            for _ in self._reloading(config, topology, 2000):
                pass

    async def reload_async(self, config: RulesSite, topology: Topology, *, step: int = 2000,
                           freeze: bool = False) -> None:
        """`reload`, with the new rules bound `step` at a time between the event loop's turns: the running
        engine goes on judging every batch until the new one takes over. At 21,500 CDUs binding their
        322,500 rules stopped the loop for 4-5 s in one piece. `freeze`: what was built is frozen
        (`collector.paused(freeze=True)`) for a process that settles the collector next, so the first
        collections after do not walk it first (another 1.6 s at that size)."""
        with collector.paused(freeze=freeze):
            for _ in self._reloading(config, topology, step):
                await asyncio.sleep(0)

    def _reloading(self, config: RulesSite, topology: Topology, step: int) -> Iterator[None]:
        """The new engine, bound `step` rules at a time (a pause after each), then installed."""
        push = {d.id for d in config.devices if getattr(d, "mode", "poll") == "subscribe"}
        engine = Engine(config.rules, topology, self.store, self.clock, self._on_event, push=push, bind=False)
        yield from engine.binding(step)
        self._install(config, topology, engine)

    def _install(self, config: RulesSite, topology: Topology, engine: Engine) -> None:
        # The control actions are made anew for the new file, and what the running ones were doing goes on
        # (`ControlActions(previous=...)`): a delayed action still due, the envelope's budget, the leases,
        # a leak response in progress.
        controller = self.control.controller
        self.config = config.rules
        self.topology = topology
        self.engine = engine
        BOUND.set(len(self.engine.bound))
        self.silencer = Silencer(topology, self.store, self.engine.loop_fault_rules, COMM_RULE,
                                 self.engine.readings.offline)
        self.control = ControlActions(self.config.control, topology, self.store, self.engine.readings,
                                      self.clock, controller, state_dir=Path(config.state_dir),
                                      previous=self.control)

    # ---- the loop ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick until cancelled; the store is flushed on the way out."""
        try:
            while True:
                await self.tick_async()
                await self._flush()
                await self.clock.sleep(self.config.tick)
        finally:
            for task in self._control_tasks:
                task.cancel()
            await asyncio.gather(*self._control_tasks, return_exceptions=True)
            self.control.close()
            # Both on the store's writer, in this order: a flush cut short by the cancellation still
            # lands before the final one, never after it.
            try:
                await asyncio.shield(self._flush())
            finally:
                await asyncio.shield(self.store.close_async())

    async def _flush(self) -> None:
        try:
            await self.store.flush_async()
        except DISK_ERRORS as err:
            # The changes stay in memory (one snapshot per alarm) and go with the next flush.
            ERRORS.inc(where="store")
            if not self._store_failing:
                log.error("alarm store write failed; keeping changes in memory, retrying every tick",
                          error=str(err))
            self._store_failing = True
            return
        if self._store_failing:
            log.info("alarm store writable again")
            self._store_failing = False

    def tick(self) -> None:
        """One round: rack metrics into the pipeline, timers, silences, due control actions."""
        started = self.clock.now_ns()
        wall = time.perf_counter()
        for batch in self.engine.rack_batches():
            if self.publish is not None:
                self.publish(batch)  # comes back to our sink like any other batch
            else:
                self.engine.on_batch(batch)
        self.engine.tick(started)
        self._after_tick(wall)

    def _after_tick(self, wall: float) -> None:
        self.refresh()
        for command in self.control.due():
            task = asyncio.get_running_loop().create_task(self.control.send(command),
                                                          name=f"rules:control:{command.device}")
            self._control_tasks.add(task)
            task.add_done_callback(self._control_tasks.discard)
        for job in self.control.jobs():  # lease restores, leak response stages
            task = asyncio.get_running_loop().create_task(job, name="rules:control:job")
            self._control_tasks.add(task)
            task.add_done_callback(self._control_tasks.discard)
        TICK_SECONDS.observe(time.perf_counter() - wall)

    async def tick_async(self, chunk: int = 100) -> None:
        """`tick`, yielding to the event loop every `chunk` racks and every few hundred judgements: a
        hall of hundreds of racks must not hold up the pollers for a whole tick."""
        started = self.clock.now_ns()
        wall = time.perf_counter()
        batches: list[Batch] = []
        for _ in self.engine.rack_batch_steps(batches):
            await asyncio.sleep(0)
        for i, batch in enumerate(batches):
            if self.publish is not None:
                self.publish(batch)
            else:
                self.engine.on_batch(batch)
            if i % chunk == chunk - 1:
                await asyncio.sleep(0)
        for _ in self.engine.tick_steps(started):
            await asyncio.sleep(0)
        self._after_tick(wall)

    def refresh(self) -> None:
        """Re-check why firing alarms are held back: a silence that ended lets the firing through,
        unless the alarm is already on its way out (its condition cleared, waiting the clear delay):
        the after-effect of an inhibited fault is not worth a page."""
        now = self.clock.now_ns()
        for record in self.store.records():
            if record.state is not AlarmState.FIRING:
                continue
            changed = False
            if record.shelved_until_ns is not None and record.shelved_until_ns <= now:
                record.shelved_until_ns, record.shelved_by = None, ""
                changed = True
            reason = self.silencer.reason(record, now)
            if reason != record.suppressed:
                record.suppressed = reason
                changed = True
                # The retained MQTT alarm shows whether, and by what, it is suppressed now.
                if self.alarm_outlet is not None:
                    self.alarm_outlet.alarm_changed(record.event())
            if not reason and not record.notified and not self.engine.recovering(record.key):
                self._notify(record)
                changed = True
            if changed:
                self.store.put(record)

    # ---- alarm events ------------------------------------------------------------------------------------

    def _on_event(self, record: AlarmRecord) -> None:
        """An alarm fired, changed severity or resolved (the engine stores it right after)."""
        now = self.clock.now_ns()
        EVENTS.inc(state=str(record.state), severity=str(record.severity))
        if record.state is AlarmState.FIRING:
            record.suppressed = self.silencer.reason(record, now)
            if not record.suppressed:
                self._notify(record)
        elif record.notified and self.notifier is not None:
            self.notifier.submit(record.event())
        # Raised alarms at warning (critical ones at error), so a log filtered at warning still shows
        # every fault; a resolve is good news, at info.
        level = logging.INFO
        if record.state is AlarmState.FIRING:
            level = logging.ERROR if record.severity is Severity.CRITICAL else logging.WARNING
        log.log(level, "alarm", key=record.key, state=str(record.state), severity=str(record.severity),
                message=record.message, suppressed=record.suppressed or None)
        self._publish(record)
        if self.alarm_outlet is not None:
            self.alarm_outlet.alarm_changed(record.event())
        self.control.on_alarm(record)

    def _notify(self, record: AlarmRecord) -> None:
        record.notified = True
        if self.notifier is not None:
            self.notifier.submit(record.event())

    def _on_operator(self, record: AlarmRecord) -> None:
        # Stored again at the event's own time: the database merges the acknowledgement into that point,
        # so dashboards see who acknowledged without a second event to count or annotate.
        self._publish(record)
        event = record.event()
        if self.alarm_outlet is not None:
            self.alarm_outlet.alarm_changed(event)
        # The notifier knows acknowledgements (they stop reminders); shelves it need not know: the
        # alarm's notifications are held back here.
        if record.notified and record.acknowledged and self.notifier is not None:
            self.notifier.submit(event)

    def _publish(self, record: AlarmRecord) -> None:
        if self.publish is None:
            return
        tags = tuple(sorted({"rule": record.rule, "severity": str(record.severity)}.items()))
        ts = record.updated_ns
        fields: list[tuple[str, str | float | bool | None]] = [
            ("state", str(record.state)), ("value", record.value), ("threshold", record.threshold),
            ("message", record.message), ("acknowledged", record.acknowledged), ("ack_by", record.ack_by),
        ]
        samples = [Sample(record.subject, name, value, ts, measurement="alarm", tags=tags)
                   for name, value in fields if value is not None]
        self.publish(Batch(record.subject, "alarm", ts, samples))

    def _collect(self) -> None:
        counts = {"warning": 0, "critical": 0}
        for record in self.store.records():
            if record.state is AlarmState.FIRING:
                counts[str(record.severity)] += 1
        for severity, count in counts.items():
            FIRING.set(count, severity=severity)

    # ---- for tests and tools -----------------------------------------------------------------------------

    def firing(self) -> list[AlarmRecord]:
        return [replace(r) for r in self.store.active()]
