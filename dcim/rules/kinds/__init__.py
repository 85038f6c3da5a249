"""Rule kinds: one file each (a configuration model and a condition, see rules.kinds.base), registered here.

The built-in kinds register below, one line each; an installed package adds one through an entry point of
the group `dcim.rule_kinds` naming its `RuleKind`:

    [project.entry-points."dcim.rule_kinds"]
    band = "dcim_band:KIND"

`Rule` is the configuration of one rule: the model of the kind its `kind:` names (`threshold` when absent).
"""

from __future__ import annotations

from typing import Annotated, Any

from dcim.core.registry import Registry
from dcim.rules.kinds import rate, state, threshold
from dcim.rules.kinds.base import (
    Assessment,
    Condition,
    Level,
    RuleBase,
    RuleKind,
    Subject,
    ThresholdSpec,
    Tuning,
    check_threshold,
    same_value,
)
from dcim.rules.union import RegistryUnion

__all__ = [
    "RULE_KINDS", "Assessment", "Condition", "Level", "Rule", "RuleBase", "RuleKind", "Subject", "ThresholdSpec",
    "Tuning", "check_threshold", "same_value",
]

RULE_KINDS: Registry[RuleKind[Any]] = Registry("rule kind", "dcim.rule_kinds", lambda kind: kind.name)

RULE_KINDS.register(threshold.KIND)
RULE_KINDS.register(rate.KIND)
RULE_KINDS.register(state.KIND)

Rule = Annotated[RuleBase, RegistryUnion(RULE_KINDS, "kind", lambda kind: kind.model, default="threshold")]
