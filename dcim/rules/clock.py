"""Time for the rule engine: every pending period, clear delay, no-data timer, shelve expiry and
maintenance window reads `now_ns()` from a clock, so tests drive time instead of sleeping.

    clock = FakeClock(start_ns=0)
    clock.advance(30)          # thirty seconds pass, at once; sleepers whose time came wake up
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

NS = 1_000_000_000


class Clock(Protocol):
    def now_ns(self) -> int: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock that moves only when told to. `sleep` returns once `advance` has passed its deadline."""

    def __init__(self, start_ns: int = 1_700_000_000 * NS) -> None:
        self._now = start_ns
        self._seq = itertools.count()
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []

    def now_ns(self) -> int:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += round(seconds * NS)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + round(seconds * NS), next(self._seq), future))
        await future
