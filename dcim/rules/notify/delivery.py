"""One delivery loop per hook: take from the hook's durable outbox, send, retry with backoff, acknowledge.

A message leaves the outbox only once the hook took it (or refused it for good), so a hook that is down,
or a restart mid-retry, loses nothing; one hook that is down holds up only its own outbox. The failure of
a hook is logged once, and its recovery once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from dcim.core.aio import reraise_lost_cancellation
from dcim.core.journal import Outbox
from dcim.core.metrics import REGISTRY
from dcim.core.outbox import Item
from dcim.rules.hooks.base import Hook, HookError
from dcim.rules.notify.config import Retry

if TYPE_CHECKING:
    import aiohttp

log = structlog.get_logger(__name__)

DELIVERIES = REGISTRY.counter(
    "dcim_notify_deliveries_total", "Hook messages delivered (ok) or given up (failed)", ("hook", "result")
)
RETRIES = REGISTRY.counter(
    "dcim_notify_retries_total", "Failed hook attempts that will be retried", ("hook",)
)
SEND_SECONDS = REGISTRY.summary("dcim_notify_send_seconds", "Time of successful hook requests", ("hook",))
HOOK_UP = REGISTRY.gauge("dcim_notify_hook_up", "1 when the hook's last attempt succeeded", ("hook",))


def backoff(attempt: int, retry: Retry, rand: random.Random) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): exponential, capped, jittered."""
    base = min(retry.max_backoff, retry.initial_backoff * 2.0 ** min(attempt - 1, 32))
    return base * (1.0 - retry.jitter * rand.random())


class Delivery:
    def __init__(
        self, hook: Hook, outbox: Outbox, retry: Retry, *, rand: random.Random | None = None
    ) -> None:
        self.hook = hook
        self.outbox = outbox
        self.retry = retry
        self.rand = rand or random.Random()
        self.failing = False
        self.delivered = 0
        # Set by Notifier.track_deliveries (a cluster's leader): whether an item is still to be sent, and
        # what became of each one taken (True: the hook took it).
        self.send_if: Callable[[Item], bool] | None = None
        self.sent: Callable[[Item, bool], None] | None = None

    async def run(self, session: aiohttp.ClientSession) -> None:
        HOOK_UP.set(1, hook=self.hook.name)
        while True:
            items = await self.outbox.take(16)
            for item in items:
                ok = await self._deliver(item, session)
                # One at a time: a restart after this point never sends this message again.
                await self.outbox.ack([item])
                if self.sent is not None:
                    self.sent(item, ok)
                reraise_lost_cancellation()

    async def _deliver(self, item: Item, session: aiohttp.ClientSession) -> bool:
        """True once the hook took `item`; False when it was given up."""
        name = self.hook.name
        attempt = 0
        while True:
            if self.send_if is not None and not self.send_if(item):
                # Checked before every attempt: a leadership that ends while its hook is down sends nothing.
                log.info("notification not sent: queued by an earlier run or leadership", hook=name)
                return False
            attempt += 1
            started = time.perf_counter()
            try:
                await self.hook.send(item.payload, session)
            except HookError as err:
                reraise_lost_cancellation()
                HOOK_UP.set(0, hook=name)
                give_up = not err.transient or (
                    self.retry.max_attempts and attempt >= self.retry.max_attempts
                )
                if give_up:
                    DELIVERIES.inc(hook=name, result="failed")
                    log.error(
                        "notification given up",
                        hook=name,
                        attempts=attempt,
                        error=str(err),
                        final=not err.transient,
                    )
                    return False
                RETRIES.inc(hook=name)
                if not self.failing:
                    log.warning("hook failing, retrying with backoff", hook=name, error=str(err))
                    self.failing = True
                await asyncio.sleep(backoff(attempt, self.retry, self.rand))
                continue
            SEND_SECONDS.observe(time.perf_counter() - started, hook=name)
            DELIVERIES.inc(hook=name, result="ok")
            HOOK_UP.set(1, hook=name)
            self.delivered += 1
            if self.failing:
                log.info("hook recovered", hook=name, attempts=attempt)
                self.failing = False
            return True
