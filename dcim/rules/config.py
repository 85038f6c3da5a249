"""Configuration of the rule engine, under `rules:` in the daemon's configuration.

    rules:
      packs: {air-rack: true, liquid-rack: true, cdu-loop: true, chiller: true}   # built-ins, on by default
      disable: [rack-phase-imbalance]           # switch single built-in rules off
      overrides:                                # per-subject changes to any rule, built-in or own
        rack-utilization: {A01: {warning: 70}}
      rules:                                    # own rules; one named like a built-in replaces it
        - name: rack-hot-aisle
          scope: {racks: {cooling: air, rows: [A]}}
          metric: power_kw
          warning: "85% of power_budget_kw"
          critical: "95% of power_budget_kw"
          for: 30s
          hysteresis: 2
          clear_after: 1m
      flow_lpm_per_kw: 1.5
      control: {armed: false, ...}              # rules.control.ControlConfig
      notifications: {...}                      # rules.notify.config.NotifyConfig

Rule kinds (`threshold`, `rate`, `state`, and any an installed package registers) are one file each in
rules/kinds: a rule's `kind:` (default `threshold`) picks its model. Any rule can add `no_data`: an alarm
when the metric has had no good value for that long.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Literal, Protocol

import yaml
from pydantic import Field, field_validator, model_validator

from dcim.core.config import Duration, PositiveDuration, StrictModel
from dcim.core.events import Severity
from dcim.core.resources import package_path
from dcim.core.samples import Value
from dcim.core.topology import Hall
from dcim.rules.kinds import Rule, RuleBase, Tuning
from dcim.rules.kinds.base import Name
from dcim.rules.notify.config import NotifyConfig

PACKS = ("air-rack", "liquid-rack", "cdu-loop", "chiller", "cooling-plant")


class Communication(StrictModel):
    """One alarm per device that stops answering, instead of many on stale data."""

    enabled: bool = True
    severity: Severity = Severity.WARNING
    # One lost poll (a dropped UDP packet, a daemon starting before its devices) is not worth a page.
    for_: Duration = Field(default=30.0, alias="for")


class Envelope(StrictModel):
    """Points a control action may write, per device kind, and the values allowed."""

    kind: Literal["pdu", "cdu", "chiller"]
    # A point name; `outlet_command:{outlet}` covers the command of every outlet.
    point: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(:\{outlet\})?$")]
    min: float | None = None
    max: float | None = None
    values: list[Value] | None = None


class ActionWrite(StrictModel):
    point: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(:\{outlet\}|:[0-9.]+)?$")]
    # The value to write; or `increase_by` the point's last good value (capped by the envelope's max).
    value: Value | None = None
    increase_by: float | None = None
    # PDU outlets: `outlet_command:{outlet}` is written once per outlet listed ("all": 1..outlets), as
    # `outlet_command:7` (the driver's row-write convention).
    outlets: list[int] | Literal["all"] | None = None

    @model_validator(mode="after")
    def _one(self) -> ActionWrite:
        if (self.value is None) == (self.increase_by is None):
            raise ValueError("an action write has either `value` or `increase_by`")
        if self.outlets is not None and "{outlet}" not in self.point:
            raise ValueError("`outlets` needs `{outlet}` in the point name")
        return self


class Action(StrictModel):
    name: Name
    # When an alarm of this rule fires (at this severity or above) ...
    rule: Name
    severity: Severity = Severity.CRITICAL
    # ... wait this long (the alarm must still be firing), then write to these devices:
    delay: Duration = 0.0
    # subject: the alarm's own device; rack_pdus: the PDUs feeding the alarm's rack (or every rack of
    # the alarm's CDU); cdu: the CDU of the alarm's rack (or the alarm's CDU).
    target: Literal["subject", "rack_pdus", "cdu"]
    writes: Annotated[list[ActionWrite], Field(min_length=1)]
    outlets: Annotated[int, Field(ge=1, le=96)] = 24
    # Opt-in setpoint lease (rules/leases.py): the prior value returns when the alarm clears, or when the
    # lease runs out unrenewed (a dead daemon renews nothing).
    lease: PositiveDuration | None = None


class LeakResponse(StrictModel):
    """The tiered leak response (rules/leak.py): detected -> confirmed -> isolate."""

    # dry-run (default): every stage and the isolation plan are recorded and shown, nothing is written.
    mode: Literal["off", "dry-run", "armed"] = "dry-run"
    # The alarm that starts it (detected), on a CDU.
    rule: Name = "cdu-leak"
    # Confirmed when this many of `zone_points` read wet at once, or when the alarm has fired for `persist`.
    zones: Annotated[int, Field(ge=2)] = 2
    zone_points: list[str] = Field(default_factory=lambda: [f"leak_zone{n}" for n in range(1, 5)])
    persist: Duration = 30.0
    # Confirmed -> isolate after this long, if the alarm still fires.
    delay: Duration = 60.0
    # rack_pdus: the PDUs of the racks the CDU serves; cdu: the CDU itself (a facility valve point).
    target: Literal["rack_pdus", "cdu"] = "rack_pdus"
    outlets: Annotated[int, Field(ge=1, le=96)] = 24
    writes: Annotated[list[ActionWrite], Field(min_length=1)] = Field(default_factory=lambda: [
        ActionWrite(point="outlet_command:{outlet}", value="off", outlets="all")])


class ControlConfig(StrictModel):
    armed: bool = False
    actions: list[Action] = Field(default_factory=list)
    envelope: list[Envelope] = Field(default_factory=list)
    # At most this many commands per `period` seconds, all actions together.
    max_actions: Annotated[int, Field(ge=1)] = 10
    period: PositiveDuration = 3600.0
    # And at most one command per device and point per this many seconds (every write, whoever asks).
    min_interval: Duration = 10.0
    # A write a person asks for (`dcim write`, the HTTP API) while not armed: refused unless this is set.
    operator_writes: bool = False
    # A write is verified when the point reads back as written within this time (docs/writes.md).
    verify_timeout: PositiveDuration = 10.0
    leak: LeakResponse = LeakResponse()


class CoolingPlant(StrictModel):
    """What the cooling-plant pack and the derived cooling metrics need to know of the site (rules.metrics)."""

    # The site's ASHRAE liquid-cooling class: facility supply above its maximum is critical.
    ashrae_class: Literal["W17", "W27", "W32", "W40", "W45"] = "W32"
    # Rated cooling capacity per chiller id; a running chiller without one is taken to carry the load.
    chiller_capacity_kw: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    # A rack whose CDU runs on its last pump is judged against this share of its power budget.
    last_pump_budget_pct: Annotated[float, Field(gt=0, le=100)] = 50.0


class RulesConfig(StrictModel):
    enabled: bool = True
    packs: dict[str, bool] = Field(default_factory=lambda: dict.fromkeys(PACKS, True))
    disable: list[Name] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    overrides: dict[Name, dict[str, Tuning]] = Field(default_factory=dict)
    # Rack metrics and time-based rules are computed this often.
    tick: PositiveDuration = 1.0
    # A sample older than this no longer counts as the current value (rack metrics, rules).
    stale_after: PositiveDuration = 15.0
    flow_lpm_per_kw: Annotated[float, Field(gt=0, le=100)] = 1.5
    cooling: CoolingPlant = CoolingPlant()
    communication: Communication = Communication()
    control: ControlConfig = ControlConfig()
    notifications: NotifyConfig = NotifyConfig()
    # SQLite file of alarm state and history, relative to the daemon's state_dir.
    store: str = "alarms.db"

    @field_validator("packs")
    @classmethod
    def _known_packs(cls, packs: dict[str, bool]) -> dict[str, bool]:
        unknown = sorted(set(packs) - set(PACKS))
        if unknown:
            raise ValueError(f"unknown pack(s) {', '.join(unknown)} (packs: {', '.join(PACKS)})")
        return {**dict.fromkeys(PACKS, True), **packs}

    @model_validator(mode="after")
    def _unique(self) -> RulesConfig:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule {rule.name!r} is defined twice")
            seen.add(rule.name)
        names = [a.name for a in self.control.actions]
        if len(names) != len(set(names)):
            raise ValueError("control action names must be unique")
        return self


PACK_DIR = package_path("dcim.rules", "packs")  # the installed package's, wherever it is


class Pack(StrictModel):
    name: Name
    description: str = ""
    rules: list[Rule]


@cache
def load_pack(name: str) -> Pack:
    """A built-in pack; a broken pack file is a bug of ours, so it raises rather than reports."""
    raw = yaml.safe_load((PACK_DIR / f"{name}.yaml").read_text())
    return Pack.model_validate(raw)


def effective_rules(config: RulesConfig) -> list[RuleBase]:
    """Enabled packs, minus `disable`, with own rules replacing same-named ones, `overrides` merged in."""
    own = {rule.name: rule for rule in config.rules}
    rules: list[RuleBase] = []
    for pack, on in config.packs.items():
        if on:
            rules += [own.pop(r.name, r) for r in load_pack(pack).rules]
    rules += own.values()
    out: list[RuleBase] = []
    for rule in rules:
        if rule.name in config.disable or not rule.enabled:
            continue
        extra = config.overrides.get(rule.name)
        if extra:
            rule = rule.model_copy(update={"overrides": {**rule.overrides, **extra}})
        out.append(rule)
    return out


class RulesSite(Hall, Protocol):
    """The configuration as the rule engine sees it: the hall and its `rules:` section."""

    @property
    def rules(self) -> RulesConfig: ...


def check_references(config: RulesSite) -> list[tuple[str, str]]:
    """Names in the rules that must exist elsewhere in the configuration (racks, devices, rules)."""
    rc = config.rules
    errors: list[tuple[str, str]] = []
    racks = {rack.id for _, _, rack in config.racks()}
    devices = {d.id for d in config.devices}
    rooms = {room.id for room in config.rooms}
    rows = {row.id for room in config.rooms for row in room.rows}
    subjects = racks | devices
    known_rules = {r.name for pack, on in rc.packs.items() if on for r in load_pack(pack).rules}
    known_rules |= {r.name for r in rc.rules}
    for i, rule in enumerate(rc.rules):
        here = f"rules.rules[{i}]"
        if rule.scope.racks is not None:
            sel = rule.scope.racks
            for field_name, pool in (("ids", racks), ("rooms", rooms), ("rows", rows)):
                for j, name in enumerate(getattr(sel, field_name) or []):
                    if name not in pool:
                        errors.append((f"{here}.scope.racks.{field_name}[{j}]", f"unknown {field_name[:-1]} "
                                                                                 f"{name!r}"))
        if rule.scope.devices is not None:
            for j, name in enumerate(rule.scope.devices.ids or []):
                if name not in devices:
                    errors.append((f"{here}.scope.devices.ids[{j}]", f"unknown device {name!r}"))
        for subject in rule.overrides:
            if subject not in subjects:
                errors.append((f"{here}.overrides.{subject}", f"unknown rack or device {subject!r}"))
    for j, name in enumerate(rc.disable):
        if name not in known_rules:
            errors.append((f"rules.disable[{j}]", f"no rule named {name!r}"))
    for name, per_subject in rc.overrides.items():
        if name not in known_rules:
            errors.append((f"rules.overrides.{name}", f"no rule named {name!r}"))
        for subject in per_subject:
            if subject not in subjects:
                errors.append((f"rules.overrides.{name}.{subject}", f"unknown rack or device {subject!r}"))
    for j, action in enumerate(rc.control.actions):
        if action.rule not in known_rules:
            errors.append((f"rules.control.actions[{j}].rule", f"no rule named {action.rule!r}"))
    return errors
