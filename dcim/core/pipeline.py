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

HELD = REGISTRY.counter("dcim_poll_admission_held_total", "Polls that waited for the outboxes' backpressure")


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

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

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
    last_departed: float
    last_progress: float
    stalled: bool = False


class Admission:
    """Backpressure from the queues after the pipeline (the outboxes) to the pollers.

    A poll asks `acquire()` before it starts. While every registered backlog is below its high-water mark
    that returns at once. When one is at or above it, polls queue here, first come first served, and are let
    through as the backlog drains: as many as there is room below the mark, or half as many as left the
    backlog since the last check (so a backlog above the mark, after an outage, still shrinks while polling
    goes on). The effect past saturation: every device is still polled, in turn, later (intervals stretch
    evenly), and the outboxes stay near their marks instead of growing to their bounds.

    A backlog from which nothing has left for `stall_after` seconds is stalled, not slow (the broker is
    down, the ingest is not subscribed): holding polls back would blind the rules for as long as the outage
    lasts, so it stops counting until something leaves it again, and its outbox buffers the outage as it
    is designed to, within its own bound.
    """

    def __init__(self, *, check_every: float = 0.02, stall_after: float = 3.0) -> None:
        self.check_every = check_every
        self.stall_after = stall_after
        self._backlogs: list[_Backlog] = []
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.held = 0  # polls that had to wait, since start
        # Monotonic time the queue last moved (or was empty): a poller waiting here is not stuck while it does.
        self.last_progress = time.monotonic()

    def add_backlog(self, name: str, depth: Callable[[], int], departed: Callable[[], float], *,
                    high: int) -> None:
        """`depth`: items waiting now; `departed`: a count that grows by one for each item that left."""
        now = time.monotonic()
        self._backlogs.append(_Backlog(name, depth, departed, max(1, high), departed(), now))

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def congested(self) -> bool:
        for backlog in self._backlogs:
            if backlog.stalled:
                if backlog.departed() == backlog.last_departed:
                    continue
                backlog.stalled = False
            if backlog.depth() >= backlog.high:
                return True
        return False

    async def acquire(self) -> None:
        if not self._waiters and not self.congested():
            self.last_progress = time.monotonic()
            return
        self.held += 1
        HELD.inc()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._arm()
        try:
            await waiter
        except BaseException:
            if not waiter.done() or waiter.cancelled():
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.check_every, self._check)

    def _check(self) -> None:
        self._timer = None
        budget = self._budget()
        while self._waiters and budget > 0:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                budget -= 1
                self.last_progress = time.monotonic()
        if self._waiters:
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
            if moved > 0:
                backlog.last_progress = now
                backlog.stalled = False
            elif now - backlog.last_progress > self.stall_after:
                if not backlog.stalled:
                    log.warning("nothing leaves a backlog: polling goes on without its backpressure",
                                backlog=backlog.name, depth=backlog.depth())
                backlog.stalled = True
            if backlog.stalled:
                continue
            room = backlog.high - backlog.depth()
            if room <= 0:
                # Above the mark: half of what left, so the backlog shrinks while polling goes on.
                room = max(1, int(moved) // 2) if moved > 0 else 0
            budget = min(budget, room)
        return budget

    def summary(self) -> dict[str, Any]:
        return {
            "waiting": len(self._waiters), "held_total": self.held,
            "backlogs": {b.name: {"depth": b.depth(), "high": b.high, "stalled": b.stalled}
                         for b in self._backlogs},
        }
