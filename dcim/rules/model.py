"""Thresholds as data: a number, or a fraction / offset of something the subject knows.

    80                       absolute, in the metric's unit
    "80% of power_budget_kw" a fraction of a rack attribute (or of another metric of the same subject)
    "setpoint_c + 2"         another point of the same device, plus an offset
    "flow_required_lpm"      another metric of the same subject, as is

Rack attributes a threshold can name: `power_budget_kw`, `feed_capacity_kw` (the smaller feed's usable
capacity, see rules.metrics) and `breaker_a` (the smaller feed breaker's rating).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

RACK_ATTRIBUTES = ("power_budget_kw", "feed_capacity_kw", "breaker_a")

# Derived rack metrics (measurement `rack`), see rules.metrics.
RACK_METRICS = (
    "power_kw", "power_a_kw", "power_b_kw", "utilization_pct", "redundant_headroom_kw",
    "feed_capacity_kw", "branch_load_pct", "phase_imbalance_pct", "flow_required_lpm",
    "flow_delivered_lpm", "flow_ratio_pct", "heat_removed_kw", "heat_ratio_pct",
    "cooling_budget_kw", "cooled_utilization_pct",
)

_NAME = r"[a-z][a-z0-9_]*"
_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_PERCENT = re.compile(rf"^\s*({_NUMBER})\s*%\s*of\s+({_NAME})\s*$")
_OFFSET = re.compile(rf"^\s*({_NAME})\s*(?:([-+])\s*(\d+(?:\.\d+)?))?\s*$")


@dataclass(frozen=True, slots=True)
class Threshold:
    """value = factor x ref + offset (ref None: the offset is the absolute threshold). A rule's subject
    resolves it (rules.kinds.base.Subject.resolve)."""

    offset: float
    factor: float = 1.0
    ref: str | None = None
    text: str = ""

    def __str__(self) -> str:
        return self.text or f"{self.offset:g}"


# Each rule's thresholds are parsed again for each subject it is bound to (322,500 bindings at 21,500 CDUs):
# the same few specs, kept once (a Threshold is frozen; `typed`: 1, 1.0 and True are told apart).
@functools.lru_cache(maxsize=4096, typed=True)
def parse_threshold(spec: float | int | str) -> Threshold:
    if isinstance(spec, bool):
        raise ValueError("a threshold is a number or an expression like '80% of power_budget_kw'")
    if isinstance(spec, int | float):
        return Threshold(float(spec), text=f"{spec:g}")
    match = _PERCENT.match(spec)
    if match:
        return Threshold(0.0, float(match.group(1)) / 100.0, match.group(2), spec.strip())
    match = _OFFSET.match(spec)
    if match:
        sign = -1.0 if match.group(2) == "-" else 1.0
        return Threshold(sign * float(match.group(3) or 0.0), 1.0, match.group(1), spec.strip())
    try:
        return Threshold(float(spec), text=spec.strip())
    except ValueError:
        pass
    raise ValueError(
        f"threshold {spec!r}: use a number, 'N% of NAME' or 'NAME + N' / 'NAME - N' "
        f"(NAME a rack attribute such as {', '.join(RACK_ATTRIBUTES)}, or another point of the subject)"
    )
