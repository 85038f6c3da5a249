"""Notifications: route alarm events to on-call hooks, grouped, rate-limited, retried, durable.

    notifier = Notifier(config.rules.notifications, Path(config.state_dir))
    tg.create_task(notifier.run(), name="notifier")   # until cancelled
    notifier.submit(event)                            # from the rule engine: never blocks, never raises

    submit -> inbox -> Router (routes, groups, timers) -> RateLimiter -> hook.render
           -> per-hook durable Outbox (SQLite) -> Delivery (send, retry with backoff, ack) -> the hook

`submit` only appends to a list: a hook that is down never slows the rules. An acknowledgement reaches
the notifier as an event of unchanged state with `acknowledged=True`; it stops the reminders.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from dcim.core.events import AlarmEvent, Severity
from dcim.core.journal import Outbox
from dcim.core.metrics import REGISTRY
from dcim.core.outbox import DISK_ERRORS, Item
from dcim.core.sqlite import SqliteWriter
from dcim.rules.clock import Clock, SystemClock
from dcim.rules.hooks import Hook, make_hook
from dcim.rules.hooks.notification import Notification
from dcim.rules.notify.config import NotifyConfig
from dcim.rules.notify.delivery import Delivery
from dcim.rules.notify.ratelimit import RateLimiter
from dcim.rules.notify.router import Router
from dcim.rules.notify.state import NotifyState

__all__ = ["Clock", "Notifier", "NotifyConfig"]

log = structlog.get_logger(__name__)

NOTIFICATIONS = REGISTRY.counter(
    "dcim_notify_messages_total", "Hook messages queued for delivery", ("hook", "kind")
)
SUPPRESSED = REGISTRY.counter(
    "dcim_notify_suppressed_total", "Hook messages held back by a rate limit (alarm storm)", ("hook",)
)
QUEUE = REGISTRY.gauge("dcim_notify_queue_depth", "Messages waiting in a hook's outbox", ("hook",))
DROPPED = REGISTRY.gauge(
    "dcim_notify_dropped", "Messages dropped because a hook's outbox was full", ("hook",)
)
STATE_ERRORS = REGISTRY.counter("dcim_notify_state_errors_total", "Failed writes of the notifier's state")
INBOX_DROPPED = REGISTRY.counter("dcim_notify_inbox_dropped_total", "Alarm events dropped: inbox full")

# Alarm events waiting for the router; only reached if the router task is not running at all.
INBOX_MAX = 100_000


class Notifier:
    def __init__(self, config: NotifyConfig, state_dir: Path, *, clock: Clock | None = None,
                 writer: SqliteWriter | None = None) -> None:
        self.config = config
        # The process's SQLite writer (the daemon's); each outbox and the state make their own without.
        self.writer = writer
        self.dir = Path(state_dir) / "notify"
        self.clock: Clock = clock or SystemClock()
        self.router = Router(config)
        self.limiter = RateLimiter(config.rate_limit)
        self.hooks: dict[str, Hook] = {name: make_hook(name, hook) for name, hook in config.hooks.items()}
        self.outboxes = {
            name: Outbox(
                self.dir / f"hook-{name}.sqlite", name=f"hook-{name}", max_items=config.outbox_max_items,
                writer=writer,
            )
            for name in self.hooks
        }
        self.deliveries = {
            name: Delivery(hook, self.outboxes[name], config.retry) for name, hook in self.hooks.items()
        }
        self._inbox: deque[AlarmEvent] = deque()
        self._wakeup = asyncio.Event()
        # Set while the router has nothing left to do until its next deadline.
        self._idle = asyncio.Event()
        self.ready = asyncio.Event()
        # Set by track_deliveries: per hook, the alarm events each queued message carries, and per event how
        # many messages carrying it no hook has taken yet.
        self._on_delivered: Callable[[list[AlarmEvent]], None] | None = None
        self._carrying: dict[str, dict[bytes, list[AlarmEvent]]] = {}
        self._outstanding: dict[tuple[str, str, bool], int] = {}
        REGISTRY.add_collector(self._collect)

    @property
    def active(self) -> bool:
        return self.config.enabled and bool(self.hooks)

    @property
    def sends_resolved(self) -> bool:
        return self.config.send_resolved

    def submit(self, event: AlarmEvent) -> None:
        if not self.active:
            return
        if len(self._inbox) >= INBOX_MAX:
            INBOX_DROPPED.inc()
            return
        self._inbox.append(event)
        self._idle.clear()
        self._wakeup.set()

    def adopt(self, event: AlarmEvent) -> None:
        """An alarm another process notified already (Router.adopt): not sent again, its resolve is.
        Events submitted before it are routed first, so the order of an alarm's changes holds."""
        if not self.active:
            return
        now = self.clock.now_ns()
        while self._inbox:
            self.router.on_event(self._inbox.popleft(), now)
        self.router.adopt(event, now)
        self._wakeup.set()

    def forget(self) -> None:
        """Router.forget, with the events not yet routed dropped too (and, when tracking deliveries, the
        messages queued for the hooks: they are not sent)."""
        self._inbox.clear()
        self.router.forget()
        self._carrying.clear()
        self._outstanding.clear()
        self._wakeup.set()

    def track_deliveries(self, callback: Callable[[list[AlarmEvent]], None]) -> None:
        """For a cluster's leader (dcim.app.cluster): `callback(events)` once every message carrying these
        alarm events (their changes) was taken by its hook. Only messages queued since the last `forget` are
        sent: what an earlier run or leadership left in the outboxes is dropped unsent (the site's leader
        sends again, from etcd, whatever no hook took)."""
        self._on_delivered = callback
        for name, delivery in self.deliveries.items():
            delivery.send_if = partial(self._tracked, name)
            delivery.sent = partial(self._sent, name)

    def _tracked(self, hook: str, item: Item) -> bool:
        return item.payload in self._carrying.get(hook, {})

    def _sent(self, hook: str, item: Item, ok: bool) -> None:
        carried = self._carrying.get(hook, {}).pop(item.payload, None)
        if carried is None or self._on_delivered is None:
            return
        done = self._settle(carried)
        if done and ok:
            self._on_delivered(done)

    def _settle(self, carried: list[AlarmEvent]) -> list[AlarmEvent]:
        """One message carrying these events is done with: the events no other message carries any more."""
        done = []
        for event in carried:
            ident = _ident(event)
            left = self._outstanding.get(ident, 0) - 1
            if left > 0:
                self._outstanding[ident] = left
                continue
            self._outstanding.pop(ident, None)
            done.append(event)
        return done

    def wake(self) -> None:
        """Look at the clock again now (after a fake clock was advanced)."""
        self._idle.clear()
        self._wakeup.set()

    async def idle(self) -> None:
        """Wait until everything submitted so far is routed and what is due is in the outboxes on disk."""
        await self._idle.wait()

    def health(self) -> dict[str, Any]:
        return {
            name: {
                "up": not d.failing,
                "queued": self.outboxes[name].depth,
                "dropped": self.outboxes[name].dropped,
                "delivered": d.delivered,
            }
            for name, d in self.deliveries.items()
        }

    def _collect(self) -> None:
        for name, outbox in self.outboxes.items():
            QUEUE.set(outbox.depth, hook=name)
            DROPPED.set(outbox.dropped, hook=name)

    async def run(self) -> None:
        if not self.active:
            log.info("notifications off: no hooks configured" if self.config.enabled else "notifications off")
            self.ready.set()
            await asyncio.Event().wait()
        state = NotifyState(self.dir / "state.sqlite", writer=self.writer)
        try:
            self.router.restore([g for g in await state.open() if self._route_exists(g.route)])
            for outbox in self.outboxes.values():
                await outbox.open()
            import aiohttp  # here: the configuration imports this package, and start-up waits for it

            async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
                for name, outbox in self.outboxes.items():
                    tg.create_task(outbox.run(), name=f"notify-outbox-{name}")
                    tg.create_task(self.deliveries[name].run(session), name=f"notify-hook-{name}")
                tg.create_task(self._route_loop(state), name="notify-router")
        finally:
            # Events that arrived but were not routed yet: remember them (not sent) for the next start.
            now = self.clock.now_ns()
            while self._inbox:
                self.router.on_event(self._inbox.popleft(), now)
            for outbox in self.outboxes.values():
                await outbox.close()
            try:
                await state.save(*self.router.take_changed())
            except DISK_ERRORS as err:
                log.error("notify state not saved at shutdown", error=str(err))
            await state.close()

    def _route_exists(self, index: int) -> bool:
        return index < len(self.config.routes) if index >= 0 else not self.config.routes

    async def _route_loop(self, state: NotifyState) -> None:
        self.ready.set()
        while True:
            self._wakeup.clear()
            now = self.clock.now_ns()
            while self._inbox:
                self.router.on_event(self._inbox.popleft(), now)
            touched: set[str] = set()
            for due in self.router.due(now):
                for hook in due.hooks:
                    if self._dispatch(hook, due.notification, now):
                        touched.add(hook)
            for hook, summary in self.limiter.summaries(now):
                if self._enqueue(hook, summary, self.hooks[hook].render(summary)):
                    touched.add(hook)
            # On disk before the groups are saved as notified: a crash in between sends again rather
            # than never (at least once).
            await asyncio.gather(*(self.outboxes[h].flush() for h in touched))
            await self._save(state)
            if not self._inbox and not self._wakeup.is_set():
                self._idle.set()
            deadlines = [t for t in (self.router.next_due_ns(), self.limiter.next_due_ns()) if t is not None]
            await self._wait((min(deadlines) - self.clock.now_ns()) / 1e9 if deadlines else None)

    async def _save(self, state: NotifyState) -> None:
        live, gone = self.router.take_changed()
        try:
            await state.save(live, gone)
        except DISK_ERRORS as err:
            # Kept for the next round; meanwhile a restart could notify these groups once more.
            self.router.changed.update(g.key for g in live)
            self.router.changed.update(gone)
            STATE_ERRORS.inc()
            log.error("notify state not saved; retrying", error=str(err))

    async def _wait(self, seconds: float | None) -> None:
        """Until an event arrives or `seconds` pass on the clock (a fake clock's time, in tests)."""
        if seconds is None:
            await self._wakeup.wait()
            return
        if seconds <= 0:
            return
        waiters = [
            asyncio.ensure_future(self._wakeup.wait()),
            asyncio.ensure_future(self.clock.sleep(seconds)),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _dispatch(self, hook: str, notification: Notification, now_ns: int) -> bool:
        try:
            bodies = self.hooks[hook].render(notification)
        except Exception:
            log.exception("hook could not render a notification", hook=hook, group=notification.group_key)
            return False
        if not bodies:
            return False
        if not self.limiter.allow(hook, len(bodies), now_ns):
            self.limiter.hold(hook, notification, len(bodies))
            SUPPRESSED.inc(len(bodies), hook=hook)
            return False
        return self._enqueue(hook, notification, bodies)

    def _enqueue(self, hook: str, notification: Notification, bodies: list[bytes]) -> bool:
        # Critical first, and last to be dropped when an outbox overflows.
        priority = 0 if notification.severity is Severity.CRITICAL else 1
        if self._on_delivered is not None:
            # The alarms whose change the message tells (a summary: those it lists).
            summary = notification.kind == "summary"
            carried = [a for a in notification.alarms if summary or a.key in notification.changed]
            for body in bodies:
                carrying = self._carrying.setdefault(hook, {})
                carrying[body] = carried
                for event in carried:
                    self._outstanding[_ident(event)] = self._outstanding.get(_ident(event), 0) + 1
                # Bounded like the hook's outbox: past its bound the outbox drops its oldest messages, and
                # what they carried is forgotten here too (those pages stay pending in etcd).
                while len(carrying) > self.outboxes[hook].max_items:
                    self._settle(carrying.pop(next(iter(carrying))))
        for body in bodies:
            self.outboxes[hook].put(notification.group_key, body, priority)
        NOTIFICATIONS.inc(len(bodies), hook=hook, kind=notification.kind)
        return bool(bodies)


def _ident(event: AlarmEvent) -> tuple[str, str, bool]:
    return event.key, event.state.value, event.acknowledged
