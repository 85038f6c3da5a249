"""`threshold`: the metric above (or below) a warning and/or a critical threshold.

    - name: cdu-supply-temp
      scope: {devices: {kind: cdu}}
      metric: supply_temp_c
      when: above                          # the default; `below` for minimums
      warning: "supply_temp_setpoint_c + 2"
      critical: "supply_temp_setpoint_c + 5"

A threshold is a number or an expression of the subject's attributes and points (see rules.model).
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import field_validator, model_validator

from dcim.core.events import Severity
from dcim.rules.kinds.base import (
    Assessment,
    Condition,
    Level,
    RuleBase,
    RuleKind,
    Subject,
    ThresholdSpec,
    check_threshold,
)
from dcim.rules.model import Threshold, parse_threshold


class LimitRule(RuleBase):
    """A value against thresholds: what `threshold` and `rate` rules share."""

    when: Literal["above", "below"] = "above"
    """Which side of the thresholds is bad: above (maximums) or below (minimums)."""
    warning: ThresholdSpec | None = None
    """Warning threshold: a number in the metric's unit, or an expression of the subject's attributes and
    points ("80% of power_budget_kw", "supply_temp_setpoint_c + 2")."""
    critical: ThresholdSpec | None = None
    """Critical threshold, as `warning`."""

    _check = field_validator("warning", "critical", mode="before")(check_threshold)

    @model_validator(mode="after")
    def _a_threshold(self) -> Self:
        if self.warning is None and self.critical is None:
            raise ValueError(f"a {self.kind} rule needs a `warning` or a `critical` threshold (or both)")
        return self

    def thresholds(self) -> dict[Severity, Threshold]:
        out: dict[Severity, Threshold] = {}
        if self.critical is not None:
            out[Severity.CRITICAL] = parse_threshold(self.critical)
        if self.warning is not None:
            out[Severity.WARNING] = parse_threshold(self.warning)
        return out


class ThresholdRule(LimitRule):
    """A metric against a warning and/or a critical threshold."""

    kind: Literal["threshold"] = "threshold"
    """threshold (the default when `kind` is not given)."""


class LimitCondition(Condition[LimitRule]):
    """The value (`value()`, the metric's own by default) against the rule's thresholds."""

    # The value and the thresholds are the subject's values (a `rate` the history of one of them): time
    # alone only makes them stale, which takes the verdict away.
    timeless = True
    what: str

    def __init__(self, rule: LimitRule, subject: Subject) -> None:
        super().__init__(rule, subject)
        self.thresholds = rule.thresholds()  # most severe first
        self.above = rule.when == "above"
        self.what = rule.metric
        # Each threshold as `Subject.resolve` finds it, for `clear`: a fixed limit (a number, or a number
        # times an attribute of the subject, fixed when the rules are bound; None: never known), or a point of
        # the subject read at each judgement: (fixed, point, factor, offset).
        limits: list[tuple[float | None, str | None, float, float]] = []
        for threshold in self.thresholds.values():
            if threshold.ref is None:
                limits.append((threshold.offset, None, 1.0, 0.0))
            elif threshold.ref in subject.attributes:
                base = subject.attributes[threshold.ref]
                limits.append((None if base is None else threshold.factor * base + threshold.offset, None, 1.0, 0.0))
            else:
                limits.append((None, threshold.ref, threshold.factor, threshold.offset))
        self._limits = tuple(limits)
        self._number = subject.readings.number

    def points(self) -> set[str]:
        return {self.rule.metric} | {t.ref for t in self.thresholds.values() if t.ref}

    def value(self, now_ns: int) -> float | None:
        return self._number(self.subject.id, self.rule.metric, now_ns)

    def assess(self, now_ns: int) -> Assessment | None:
        value = self.value(now_ns)
        if value is None:
            return None
        levels: list[Level] = []
        for severity, threshold in self.thresholds.items():
            limit = self.subject.resolve(threshold, now_ns)
            if limit is not None:
                levels.append((severity, value - limit if self.above else limit - value, limit))
        # No threshold known now (what they refer to has no current value): no verdict.
        return Assessment(value, levels) if levels else None

    def clear(self, now_ns: int) -> bool | None:
        # `assess` without its levels and assessment: no level past its threshold (True), no value or no
        # threshold known now (None), or one past it (False: judged in full).
        value = self.value(now_ns)
        if value is None:
            return None
        known = False
        above, number, subject = self.above, self._number, self.subject.id
        for limit, point, factor, offset in self._limits:
            if point is not None:
                base = number(subject, point, now_ns)
                if base is None:
                    continue
                limit = factor * base + offset
            elif limit is None:
                continue
            if (value - limit if above else limit - value) > 0.0:
                return False
            known = True
        return True if known else None

    def describe(self, assessment: Assessment, severity: Severity, threshold: float | None) -> str:
        rule = self.rule
        return (f"{self.subject.id}: {rule.description or rule.name}: {self.what} {assessment.value:.4g} "
                f"{'>' if self.above else '<'} {threshold:.4g} ({self.thresholds[severity]})")


KIND = RuleKind("threshold", ThresholdRule, LimitCondition)
