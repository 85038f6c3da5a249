"""Configuration of the rule engine (extended by the rules package)."""

from __future__ import annotations

from drivers.base import StrictModel


class RulesConfig(StrictModel):
    enabled: bool = True
