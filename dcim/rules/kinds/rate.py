"""`rate`: the metric's change over `window`, expressed per `per` seconds, against thresholds.

    - name: supply-temp-rising
      scope: {devices: {kind: cdu}}
      metric: supply_temp_c
      kind: rate
      window: 2m             # the change over two minutes ...
      per: 1m                # ... expressed per minute
      warning: 2             # K per minute

Less than half a window of data gives no verdict (the alarm holds as it is).
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from dcim.core.config import PositiveDuration
from dcim.rules.kinds.base import RuleKind, Subject
from dcim.rules.kinds.threshold import LimitCondition, LimitRule
from dcim.rules.metrics import Reading

NS = 1_000_000_000


class RateRule(LimitRule):
    """The metric's rate of change against thresholds (e.g. K per minute)."""

    kind: Literal["rate"]
    """rate."""
    window: PositiveDuration = 60.0
    """The change is measured over this window; less than half a window of data gives no verdict."""
    per: PositiveDuration = 60.0
    """The change is expressed per this long: thresholds are in metric units per `per`."""


class RateCondition(LimitCondition):
    observes = True
    timeless = True  # the rate is of the observed history; time alone only makes it stale

    def __init__(self, rule: LimitRule, subject: Subject) -> None:
        super().__init__(rule, subject)
        assert isinstance(rule, RateRule)
        self.window_ns = round(rule.window * NS)
        self.per = rule.per
        self.what = "rate of " + rule.metric
        # (ts_ns, value) of the metric over the window, plus the last one before it.
        self.history: deque[tuple[int, float]] = deque()

    def observe(self, point: str, reading: Reading) -> None:
        if point != self.rule.metric or isinstance(reading.value, str):
            return
        history, ts_ns = self.history, reading.ts_ns
        if history and ts_ns <= history[-1][0]:
            return
        history.append((ts_ns, float(reading.value)))
        horizon = ts_ns - self.window_ns
        while len(history) > 2 and history[1][0] <= horizon:
            history.popleft()

    def value(self, now_ns: int) -> float | None:
        history = self.history
        if len(history) < 2 or now_ns - history[-1][0] > self.subject.readings.stale_after_ns:
            return None
        (t0, v0), (t1, v1) = history[0], history[-1]
        # Less than half a window of data says little about the rate over the window.
        if t1 - t0 < self.window_ns / 2:
            return None
        return (v1 - v0) / ((t1 - t0) / NS) * self.per


KIND = RuleKind("rate", RateRule, RateCondition)
