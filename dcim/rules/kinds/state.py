"""`state`: the metric equals one of `match` (a leak, a pump fault, a tripped chiller).

    - name: cdu-leak
      scope: {devices: {kind: cdu}}
      metric: leak
      kind: state
      match: [true]
      severity: critical     # the default

Text values compare case-insensitively; numbers and booleans as numbers.
"""

from __future__ import annotations

import math
from typing import Literal, Self

from pydantic import Field, model_validator

from dcim.core.events import Severity
from dcim.core.samples import Value
from dcim.rules.kinds.base import Assessment, Condition, Level, RuleBase, RuleKind, Subject, same_value


class StateRule(RuleBase):
    """The metric equals one of the given values (a leak, a pump fault, a tripped chiller)."""

    kind: Literal["state"]
    """state."""
    match: list[Value] | None = Field(default=None, examples=[[True], ["fault", "tripped"]])
    """The values that raise the alarm (text compared case-insensitively)."""
    severity: Severity = Severity.CRITICAL
    """Severity of the alarm."""

    @model_validator(mode="after")
    def _match(self) -> Self:
        if not self.match:
            raise ValueError("a state rule needs `match`: the values that raise it (e.g. [true])")
        return self


class StateCondition(Condition[StateRule]):
    timeless = True  # the current value matches or not; time alone only makes it stale

    def __init__(self, rule: StateRule, subject: Subject) -> None:
        super().__init__(rule, subject)
        self.match = tuple(rule.match or ())
        # A state has no distance to a threshold: it matches or it does not, whatever the hysteresis.
        self.hit: tuple[Level] = ((rule.severity, math.inf, None),)
        self.miss: tuple[Level] = ((rule.severity, -math.inf, None),)

    def assess(self, now_ns: int) -> Assessment | None:
        reading = self.subject.reading(self.rule.metric, now_ns)
        if reading is None:
            return None
        value = reading.value
        hit = any(same_value(value, wanted) for wanted in self.match)
        return Assessment(None if isinstance(value, str) else float(value), self.hit if hit else self.miss, value)

    def clear(self, now_ns: int) -> bool | None:
        reading = self.subject.reading(self.rule.metric, now_ns)
        if reading is None:
            return None
        value = reading.value
        return not any(same_value(value, wanted) for wanted in self.match)

    def describe(self, assessment: Assessment, severity: Severity, threshold: float | None) -> str:
        rule = self.rule
        return f"{self.subject.id}: {rule.description or rule.name} ({rule.metric} = {assessment.reading})"


KIND = RuleKind("state", StateRule, StateCondition)
