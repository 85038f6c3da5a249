"""Rate limits for alarm storms: at most N messages per hook, and M in all, per rolling minute.

What is over the bound is not sent; it is counted, and when the hook has room again it gets one summary
("N more notifications held back") listing the alarms concerned, so the people on call know the scale of
the storm without being buried by it. A summary does not count against the bound: each hook sends at most
`per_hook_per_minute + 1` messages a minute.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dcim.core.events import AlarmEvent
from dcim.rules.hooks.notification import Notification
from dcim.rules.notify.config import RateLimit

WINDOW_NS = 60 * 1_000_000_000
# The summary lists this many alarms at most; the count covers them all.
_SUMMARY_ALARMS = 50


@dataclass(slots=True)
class _Held:
    messages: int = 0
    alarms: dict[str, AlarmEvent] = field(default_factory=dict)


class RateLimiter:
    def __init__(self, config: RateLimit) -> None:
        self.config = config
        self._sent: dict[str, deque[int]] = {}
        self._all: deque[int] = deque()
        self._held: dict[str, _Held] = {}

    def _prune(self, window: deque[int], now_ns: int) -> None:
        while window and window[0] <= now_ns - WINDOW_NS:
            window.popleft()

    def allow(self, hook: str, messages: int, now_ns: int) -> bool:
        """Take room for a notification's `messages` to `hook`, or refuse the notification as a whole."""
        window = self._sent.setdefault(hook, deque())
        self._prune(window, now_ns)
        self._prune(self._all, now_ns)
        if (
            len(window) + messages > self.config.per_hook_per_minute
            or len(self._all) + messages > self.config.global_per_minute
        ):
            return False
        window.extend([now_ns] * messages)
        self._all.extend([now_ns] * messages)
        return True

    def hold(self, hook: str, notification: Notification, messages: int) -> None:
        held = self._held.setdefault(hook, _Held())
        held.messages += messages
        for alarm in notification.alarms:
            if alarm.key in notification.changed or notification.repeat:
                held.alarms[alarm.key] = alarm

    def _room_at(self, hook: str) -> int:
        window = self._sent.get(hook)
        return window[0] + WINDOW_NS if window else 0

    def next_due_ns(self) -> int | None:
        return min((self._room_at(h) for h in self._held), default=None)

    def summaries(self, now_ns: int) -> list[tuple[str, Notification]]:
        """One summary per hook with held messages, once its oldest message of the window has aged out."""
        out = []
        for hook, held in list(self._held.items()):
            window = self._sent.get(hook, deque())
            self._prune(window, now_ns)
            if len(window) >= self.config.per_hook_per_minute:
                continue
            del self._held[hook]
            alarms = sorted(held.alarms.values(), key=lambda a: (a.severity.value != "critical", a.key))
            racks = sorted({a.labels.get("rack") or a.subject for a in alarms})
            detail = (
                f"{held.messages} messages for {len(alarms)} alarms were held back during an alarm storm "
                f"(limit {self.config.per_hook_per_minute}/min per hook, "
                f"{self.config.global_per_minute}/min in all). Subjects: {', '.join(racks[:30])}"
                + (" ..." if len(racks) > 30 else "")
            )
            notification = Notification(
                group_key="rate-limit",
                group_labels={"scope": "storm"},
                alarms=alarms[:_SUMMARY_ALARMS],
                kind="summary",
                suppressed=held.messages,
                ts_ns=now_ns,
                extra={"detail": detail},
            )
            out.append((hook, notification))
        return out
