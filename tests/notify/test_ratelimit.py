"""The storm bound as pure state: per hook, global, the summary, and the rolling minute."""

from __future__ import annotations

from dcim.rules.hooks.notification import Notification
from dcim.rules.notify.config import RateLimit
from dcim.rules.notify.ratelimit import WINDOW_NS, RateLimiter
from tests.notify.conftest import event

T0 = 1_700_000_000 * 1_000_000_000


def note(rack: str) -> Notification:
    alarm = event(rack)
    return Notification(f"g-{rack}", {"rack": rack}, [alarm], frozenset({alarm.key}))


def test_per_hook_and_global_bounds() -> None:
    limiter = RateLimiter(RateLimit(per_hook_per_minute=3, global_per_minute=5))
    assert [limiter.allow("a", 1, T0) for _ in range(4)] == [True, True, True, False]
    assert [limiter.allow("b", 1, T0) for _ in range(3)] == [True, True, False]  # global: 5 in all
    # A notification of several messages is taken whole or not at all.
    assert limiter.allow("c", 2, T0) is False


def test_the_window_rolls_and_a_summary_follows() -> None:
    limiter = RateLimiter(RateLimit(per_hook_per_minute=2, global_per_minute=100))
    for i, rack in enumerate(["A01", "A02", "A03", "A04", "A05"]):
        if not limiter.allow("pd", 1, T0 + i):
            limiter.hold("pd", note(rack), 1)
    assert limiter.next_due_ns() == T0 + WINDOW_NS
    assert limiter.summaries(T0 + WINDOW_NS - 1) == []
    [(hook, summary)] = limiter.summaries(T0 + WINDOW_NS)
    assert hook == "pd" and summary.kind == "summary" and summary.suppressed == 3
    assert sorted(a.subject for a in summary.alarms) == ["A03", "A04", "A05"]
    assert "A03, A04, A05" in summary.text
    assert limiter.next_due_ns() is None and limiter.summaries(T0 + 2 * WINDOW_NS) == []
    assert limiter.allow("pd", 1, T0 + WINDOW_NS + 1)
