"""The in-process fan-out between drivers and everything downstream. It does no I/O of its own.

Sinks are called synchronously, in the order they were added, and must not block: a sink that does I/O
(the MQTT publisher) only appends to its own outbox and wakes its own task. The rule engine is added
first, so rules see every sample before MQTT does and a broker outage never blinds enforcement.

`Admission` carries the backpressure the other way: the outboxes behind the sinks register their depth
with it, and a poller waits in it before each poll while they are above their high-water marks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from dcim.core.metrics import REGISTRY
from dcim.core.samples import Batch, DeviceStatus

log = structlog.get_logger(__name__)

# The marks follow the drain: about MARK_SECONDS of it may wait, never fewer than MIN_MARK items (one small
# publisher batch) nor more than the configured mark.
MARK_SECONDS = 1.0
MIN_MARK = 50
RATE_WINDOW = 1.0

HELD = REGISTRY.counter("dcim_poll_admission_held_total", "Polls that waited for the outboxes' backpressure")
IN_FLIGHT_LIMIT = REGISTRY.gauge(
    "dcim_polls_in_flight_limit",
    "Polls of online devices allowed to run at once now (lowered while the event loop runs late, up to its cap; "
    "0: no limit)")
# The limit on polls in flight follows the event loop's lag (`Admission.follow_lag`): the lag is smoothed
# (each sample weighs LAG_WEIGHT), above the target the limit shrinks by LIMIT_DECREASE each sample, below
# half the target it grows back by 1/LIMIT_STEPS of the cap each sample: from the cap to an eighth of it in
# about 20 samples, and back in at most LIMIT_STEPS.
LAG_WEIGHT = 0.3
LIMIT_DECREASE = 0.9
LIMIT_STEPS = 32
SUPERSEDED = REGISTRY.counter(
    "dcim_pipeline_derived_superseded_total",
    "Derived batches (rack and plant metrics) held back past saturation and replaced by a newer tick's")


class Sink(Protocol):
    def on_batch(self, batch: Batch) -> None: ...

    def on_status(self, status: DeviceStatus) -> None: ...


class Pipeline:
    def __init__(self) -> None:
        self._sinks: list[Sink] = []
        self.batches = 0
        self.samples = 0
        self.sink_errors = 0
        self.last_publish = time.monotonic()
        # Pollers ask it before each poll: the backpressure of the outboxes behind the sinks.
        self.admission = Admission()
        self._deferrable: set[int] = set()
        # Derived batches held back from the deferrable sinks: (subject, kind) -> the latest one.
        self._deferred: dict[tuple[str, str], Batch] = {}
        self.superseded = 0

    def add_sink(self, sink: Sink, *, deferrable: bool = False) -> None:
        """`deferrable`: a sink behind a backlog (the MQTT publisher). While the admission holds polls back,
        derived batches (`publish_derived`) reach it later, the latest per subject."""
        self._sinks.append(sink)
        if deferrable:
            self._deferrable.add(id(sink))

    def publish(self, batch: Batch) -> None:
        self.batches += 1
        self.samples += len(batch.samples)
        self.last_publish = time.monotonic()
        for sink in self._sinks:
            try:
                sink.on_batch(batch)
            except Exception:
                # One faulty sink must not starve the others (rules above all).
                self.sink_errors += 1
                log.exception("sink failed", sink=type(sink).__name__, device=batch.device)

        if self._deferred and not self.admission.congested():
            self._release_deferred()

    def publish_derived(self, batch: Batch) -> None:
        """A batch the rules derive again every tick (rack and plant metrics; alarm records are events and
        go as `publish`). Every sink but the deferrable ones gets it at once, so rules see it first as
        always. Past saturation, while the admission holds polls back, the deferrable sinks get it later:
        the latest batch per subject is kept (bounded by the number of subjects) and one superseded by a
        newer tick's is counted, not sent; derived metrics are thinned like the polls, instead of filling
        the outbox at the rules' fixed pace while the polls wait."""
        if batch.kind == "alarm" or not self._deferrable or (not self._deferred and not self.admission.congested()):
            self.publish(batch)
            return
        self.batches += 1
        self.samples += len(batch.samples)
        for sink in self._sinks:
            if id(sink) not in self._deferrable:
                self._call(sink, batch)
        key = (batch.device, batch.kind)
        if key in self._deferred:
            self.superseded += 1
            SUPERSEDED.inc()
        self._deferred[key] = batch
        if not self.admission.congested():
            self._release_deferred()

    def _release_deferred(self) -> None:
        # Oldest first, and no more than the backlogs have room for: no burst past the marks.
        room = self.admission.room()
        while self._deferred and room > 0:
            key = next(iter(self._deferred))
            batch = self._deferred.pop(key)
            for sink in self._sinks:
                if id(sink) in self._deferrable:
                    self._call(sink, batch)
            room -= 1

    def _call(self, sink: Sink, batch: Batch) -> None:
        try:
            sink.on_batch(batch)
        except Exception:
            self.sink_errors += 1
            log.exception("sink failed", sink=type(sink).__name__, device=batch.device)

    def status(self, status: DeviceStatus) -> None:
        for sink in self._sinks:
            try:
                sink.on_status(status)
            except Exception:
                self.sink_errors += 1
                log.exception("sink failed", sink=type(sink).__name__, device=status.device)


@dataclass(slots=True)
class _Backlog:
    name: str
    depth: Callable[[], int]
    departed: Callable[[], float]
    high: int
    alive: Callable[[], bool] | None
    stall_after: float
    last_departed: float
    last_progress: float
    stalled: bool = False
    # Departures per second, measured over windows of RATE_WINDOW seconds, and the window's start.
    rate: float = 0.0
    # Above the mark: polls owed for half of what left, carried from check to check.
    credit: float = 0.0
    window_start: float = 0.0
    window_departed: float = 0.0

    def mark(self, now: float) -> float:
        """The high-water mark now: what leaves in MARK_SECONDS at the measured pace, at least MIN_MARK, at most high.
        A fixed count would mean seconds of delay on a starved machine and a needless hold on a fast one."""
        if now - self.window_start >= RATE_WINDOW:
            departed = self.departed()
            measured = (departed - self.window_departed) / (now - self.window_start)
            self.rate = measured if self.rate == 0.0 else 0.5 * self.rate + 0.5 * measured
            self.window_start, self.window_departed = now, departed
        return min(self.high, max(MIN_MARK, self.rate * MARK_SECONDS))

    def counts(self) -> bool:
        """Whether this backlog holds polls back now: not while its hop is down, nor while it is stalled."""
        if self.alive is not None and not self.alive():
            return False
        if self.stalled:
            if self.departed() == self.last_departed:
                return False
            self.stalled = False
        return True


class Admission:
    """Backpressure from the queues after the pipeline (the outboxes) to the pollers.

    A poll asks `acquire()` before it starts. While every registered backlog is below its high-water mark
    that returns at once. When one is at or above it, polls queue here, first come first served, and are let
    through as the backlog drains: as many as there is room below the mark, or half as many as left the
    backlog since the last check (so a backlog above the mark, after an outage, still shrinks while polling
    goes on). The effect past saturation: every device is still polled, in turn, later (intervals stretch
    evenly), and the outboxes stay near their marks instead of growing to their bounds.

    A backlog whose hop is down (`alive` says so: the broker is not connected) holds nothing back: holding
    polls would blind the rules for as long as the outage lasts, and its outbox buffers the outage as it is
    designed to, within its own bound. A backlog without such a flag, or whose flag says up while nothing
    has left it for `stall_after` seconds, is taken as stalled the same way until something leaves it again.
    Past saturation on a busy machine one batch of the publisher can take seconds: `stall_after` is long.

    Polls of online devices in flight at once are at most `max_in_flight`, and fewer while the event loop
    runs late (`follow_lag`, fed by the daemon's lag watch): a saturated loop takes a turn per step of every
    poll it runs, each turn as long as the work the polls in flight bring to it, so a thousand polls in
    flight add a turn's length to every step of each, and the time from a poll's start (its samples' time)
    to its answer taken grows with the number in flight, not with the work done. The limit shrinks while
    the smoothed lag is above `lag_target` and grows back to the cap once it is below half of it, never
    below `min_in_flight`: a loop with room (devices that answer slowly, at any number in flight) keeps the
    whole cap.
    """

    def __init__(self, *, check_every: float = 0.02, stall_after: float = 30.0,
                 max_in_flight: int | None = None, max_offline_in_flight: int | None = None,
                 min_in_flight: int = 1, lag_target: float | None = None) -> None:
        self.check_every = check_every
        self.stall_after = stall_after
        # Polls running at once, at most (None: no bound). Past saturation a thousand polls started together
        # all run past their deadlines on a starved event loop and fail; a bounded number finish in time and
        # the others wait here, where no deadline runs. Polls of offline devices (`acquire(capped=False)`)
        # have a pool of their own: a mass outage of devices that time out must not hold the others back,
        # and must not be unbounded either, since a starved loop makes every device look offline (its polls
        # time out), and a thousand polls at once would then keep every one of them failing.
        self.max_in_flight = max_in_flight
        self.max_offline_in_flight = max_offline_in_flight
        # The limit below the cap while the loop runs late (None: the cap), its floor, the smoothed lag and
        # the lag above which the limit shrinks (None: it never does).
        self.limit: int | None = None
        self.min_in_flight = min_in_flight
        self.lag = 0.0
        self.lag_target = lag_target
        self.in_flight = 0
        self.offline_in_flight = 0
        self._backlogs: list[_Backlog] = []
        # Polls waiting, one queue per pool (True: the bounded pool, False: offline devices'), each entry with
        # its arrival number: admitting is O(1) per poll let through, whatever the number waiting. (A single
        # queue scanned for the next waiter of a pool with room cost O(waiters) per check, and past five
        # times saturation, 2,500 devices waiting, the scans starved the very polls they were to admit.)
        self._waiters: dict[bool, deque[tuple[int, asyncio.Future[None]]]] = {True: deque(), False: deque()}
        self._arrivals = 0
        self._timer: asyncio.TimerHandle | None = None
        self.held = 0  # polls that had to wait, since start
        # Monotonic time the queue last moved (or was empty): a poller waiting here is not stuck while it does.
        self.last_progress = time.monotonic()

    def add_backlog(self, name: str, depth: Callable[[], int], departed: Callable[[], float], *, high: int,
                    alive: Callable[[], bool] | None = None, stall_after: float | None = None) -> None:
        """`depth`: items waiting now; `departed`: a count that grows by one for each item that left;
        `alive`: False while the hop after the backlog is down (an outage, not a slow hop)."""
        now = time.monotonic()
        self._backlogs.append(_Backlog(name, depth, departed, max(1, high), alive,
                                       self.stall_after if stall_after is None else stall_after, departed(), now,
                                       window_start=now, window_departed=departed()))

    @property
    def waiting(self) -> int:
        return len(self._waiters[True]) + len(self._waiters[False])

    def congested(self) -> bool:
        now = time.monotonic()
        # A loop, not `any()` over a generator: asked before every poll, and the generator costs more than
        # the one or two backlogs it looks at.
        for backlog in self._backlogs:
            if backlog.counts() and backlog.depth() >= backlog.mark(now):
                return True
        return False

    def room(self) -> float:
        """Items the backlogs that hold polls back can take before the first reaches its mark."""
        now = time.monotonic()
        return min((b.mark(now) - b.depth() for b in self._backlogs if b.counts()), default=math.inf)

    def in_flight_limit(self) -> int | None:
        """Polls of online devices allowed in flight now: the cap, or the lower limit the loop's lag set."""
        if self.max_in_flight is None or self.limit is None:
            return self.max_in_flight
        return min(self.limit, self.max_in_flight)

    def _slot(self, capped: bool) -> bool:
        if capped:
            limit = self.in_flight_limit()
            return limit is None or self.in_flight < limit
        return self.max_offline_in_flight is None or self.offline_in_flight < self.max_offline_in_flight

    def _take(self, capped: bool) -> None:
        if capped:
            self.in_flight += 1
        else:
            self.offline_in_flight += 1

    async def acquire(self, capped: bool = True) -> None:
        """Wait for this poll's turn. Every `acquire` is followed by one `release` with the same `capped`."""
        if not self.waiting and self._slot(capped) and not self.congested():
            self._take(capped)
            self.last_progress = time.monotonic()
            return
        self.held += 1
        HELD.inc()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._arrivals += 1
        entry = (self._arrivals, waiter)
        self._waiters[capped].append(entry)
        self._arm()
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(capped)  # let through, then cancelled before it ran: its slot goes back
            else:
                try:
                    self._waiters[capped].remove(entry)  # O(waiting), on cancellation only
                except ValueError:
                    pass
            raise

    def release(self, capped: bool = True) -> None:
        if capped:
            self.in_flight -= 1
        else:
            self.offline_in_flight -= 1
        if self.waiting:
            self._check()

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.check_every, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._check()

    def _check(self) -> None:
        budget = self._budget()
        admitted = 0
        # First come, first served within each pool; across the pools, the earlier arrival of the two heads
        # whose pool has room. A pool that is full keeps its queue in place and the other may go on.
        while budget > 0:
            head: deque[tuple[int, asyncio.Future[None]]] | None = None
            pool = True
            for capped in (True, False):
                queue = self._waiters[capped]
                while queue and queue[0][1].done():
                    queue.popleft()  # cancelled while waiting
                if queue and self._slot(capped) and (head is None or queue[0][0] < head[0][0]):
                    head, pool = queue, capped
            if head is None:
                break
            head.popleft()[1].set_result(None)
            self._take(pool)
            budget -= 1
            admitted += 1
            self.last_progress = time.monotonic()
        if admitted:
            for backlog in self._backlogs:
                backlog.credit = max(0.0, backlog.credit - admitted)
        if self.waiting:
            self._arm()
        else:
            self.last_progress = time.monotonic()

    def _budget(self) -> float:
        now = time.monotonic()
        budget = math.inf
        for backlog in self._backlogs:
            departed = backlog.departed()
            moved = departed - backlog.last_departed
            backlog.last_departed = departed
            if moved > 0 or (backlog.alive is not None and not backlog.alive()):
                # Moving, or down (which counts not at all): the stall clock starts again.
                backlog.last_progress = now
                backlog.stalled = False
            elif now - backlog.last_progress > backlog.stall_after:
                if not backlog.stalled:
                    log.warning("nothing leaves a backlog: polling goes on without its backpressure",
                                backlog=backlog.name, depth=backlog.depth())
                backlog.stalled = True
            if not backlog.counts():
                continue
            room = int(backlog.mark(now)) - backlog.depth()
            if room > 0:
                backlog.credit = 0.0
            else:
                # Above the mark: half of what left, so the backlog shrinks while polling goes on.
                backlog.credit = min(backlog.credit + moved / 2, float(backlog.high))
                room = int(backlog.credit)
            budget = min(budget, room)
        return budget

    def follow_lag(self, lag: float) -> None:
        """One sample of the event loop's lag (seconds a timer ran late): the limit on polls in flight
        shrinks while the smoothed lag is above `lag_target`, grows back while it is below half of it, and
        stays put in between (no limit moves without a cap and a target)."""
        self.lag = LAG_WEIGHT * max(0.0, lag) + (1.0 - LAG_WEIGHT) * self.lag
        cap = self.max_in_flight
        if cap is None or self.lag_target is None:
            self.limit = None
        else:
            limit = self.in_flight_limit() or cap
            if self.lag > self.lag_target:
                self.limit = max(min(self.min_in_flight, cap), int(limit * LIMIT_DECREASE))
            elif self.lag < self.lag_target / 2 and limit < cap:
                self.limit = min(cap, limit + max(1, cap // LIMIT_STEPS))
                if self.waiting:
                    self._check()  # room for more now, not at the next check
        IN_FLIGHT_LIMIT.set(self.in_flight_limit() or 0)  # 0: no limit

    def summary(self) -> dict[str, Any]:
        return {
            "waiting": self.waiting, "held_total": self.held,
            "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
            "in_flight_limit": self.in_flight_limit(), "loop_lag_smoothed": round(self.lag, 4),
            "lag_target": None if self.lag_target is None else round(self.lag_target, 4),
            "offline_in_flight": self.offline_in_flight, "max_offline_in_flight": self.max_offline_in_flight,
            "backlogs": {b.name: {"depth": b.depth(), "high": b.high, "mark": round(b.mark(time.monotonic())),
                                  "drain_per_s": round(b.rate, 1), "holding": b.counts(), "stalled": b.stalled}
                         for b in self._backlogs},
        }
