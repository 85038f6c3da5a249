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
    """Raise a communication alarm for a device that stops answering."""
    severity: Severity = Severity.WARNING
    """Severity of the communication alarm."""
    # One lost poll (a dropped UDP packet, a daemon starting before its devices) is not worth a page.
    for_: Duration = Field(default=30.0, alias="for")
    """How long a device must be unreachable before the alarm fires (one lost poll is not worth a page)."""


class Envelope(StrictModel):
    """Points a control action may write, per device kind, and the values allowed."""

    kind: Literal["pdu", "cdu", "chiller"]
    """Device kind this entry applies to."""
    point: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(:\{outlet\})?$",
                                examples=["flow_setpoint_lpm", "setpoint_c", "outlet_command:{outlet}"])]
    """Canonical point a control action may write; `outlet_command:{outlet}` covers every outlet's command."""
    min: float | None = Field(default=None, examples=[100])
    """Lowest value allowed, in the point's unit (on top of the profile's own range)."""
    max: float | None = Field(default=None, examples=[900])
    """Highest value allowed, in the point's unit."""
    values: list[Value] | None = Field(default=None, examples=[["off"]])
    """For a point of discrete values: the only values allowed."""


class ActionWrite(StrictModel):
    """One write of a control action: a point and the value to give it."""

    point: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(:\{outlet\}|:[0-9.]+)?$",
                                examples=["flow_setpoint_lpm", "outlet_command:{outlet}", "outlet_command:7"])]
    """Canonical point to write; `outlet_command:{outlet}` with `outlets`, or one outlet as `outlet_command:7`."""
    value: Value | None = Field(default=None, examples=["off", 300])
    """The value to write (either this or `increase_by`)."""
    increase_by: float | None = Field(default=None, examples=[50])
    """Write the point's last good value plus this, capped by the envelope's `max`."""
    # PDU outlets: `outlet_command:{outlet}` is written once per outlet listed ("all": 1..outlets), as
    # `outlet_command:7` (the driver's row-write convention).
    outlets: list[int] | Literal["all"] | None = Field(default=None, examples=["all", [1, 2, 3]])
    """PDU outlets: the `{outlet}` point is written once per outlet listed ("all": 1 to the action's
    `outlets`)."""

    @model_validator(mode="after")
    def _one(self) -> ActionWrite:
        if (self.value is None) == (self.increase_by is None):
            raise ValueError("an action write has either `value` or `increase_by`")
        if self.outlets is not None and "{outlet}" not in self.point:
            raise ValueError("`outlets` needs `{outlet}` in the point name")
        return self


class Action(StrictModel):
    """A control action: when an alarm of `rule` fires, write to the equipment (only when `armed`)."""

    name: Name = Field(examples=["more-flow"])
    """Name of the action, unique; it appears in the audit log."""
    rule: Name = Field(examples=["cdu-flow-low"])
    """The rule whose alarm starts the action (a built-in or own rule name)."""
    severity: Severity = Severity.CRITICAL
    """Lowest severity of the alarm that starts the action."""
    delay: Duration = 0.0
    """Wait this long after the alarm fires; the action runs only if the alarm still fires then."""
    target: Literal["subject", "rack_pdus", "cdu"]
    """subject: the alarm's own device; rack_pdus: the PDUs feeding the alarm's rack (or every rack of the
    alarm's CDU); cdu: the CDU of the alarm's rack (or the alarm's CDU)."""
    writes: Annotated[list[ActionWrite], Field(min_length=1)]
    """What to write to each target device, in order."""
    outlets: Annotated[int, Field(ge=1, le=96)] = 24
    """Outlets per PDU that `outlets: all` means."""
    lease: PositiveDuration | None = Field(default=None, examples=["30m"])
    """Setpoint lease: the prior value returns when the alarm clears, or when the lease runs out unrenewed (a
    dead daemon renews nothing). Not set: the written value stays."""


class LeakResponse(StrictModel):
    """The tiered leak response (rules/leak.py): detected -> confirmed -> isolate."""

    mode: Literal["off", "dry-run", "armed"] = "dry-run"
    """dry-run: every stage and the isolation plan are recorded and shown, nothing is written; armed: the
    isolation is written (also needs `control.armed` and an envelope that allows the writes); off: none."""
    rule: Name = "cdu-leak"
    """The alarm (on a CDU) that starts the response: the leak is detected."""
    zones: Annotated[int, Field(ge=2)] = 2
    """Confirmed when this many of `zone_points` read wet at once (or when the alarm has fired for
    `persist`)."""
    zone_points: list[str] = Field(default_factory=lambda: [f"leak_zone{n}" for n in range(1, 5)])
    """The CDU's leak-zone points counted for confirmation."""
    persist: Duration = 30.0
    """Also confirmed when the alarm still fires this long after it fired."""
    delay: Duration = 60.0
    """Confirmed -> isolate after this long, if the alarm still fires."""
    target: Literal["rack_pdus", "cdu"] = "rack_pdus"
    """rack_pdus: the PDUs of the racks the CDU serves; cdu: the CDU itself (a facility valve point)."""
    outlets: Annotated[int, Field(ge=1, le=96)] = 24
    """Outlets per PDU that `outlets: all` means."""
    writes: Annotated[list[ActionWrite], Field(min_length=1)] = Field(default_factory=lambda: [
        ActionWrite(point="outlet_command:{outlet}", value="off", outlets="all")])
    """The isolation written to each target (default: every outlet off)."""


class ControlConfig(StrictModel):
    """Writes to the equipment (docs/writes.md): off unless armed, always inside the envelope and rate limits."""

    armed: bool = False
    """Nothing is ever written to equipment by a rule unless this is true."""
    actions: list[Action] = Field(default_factory=list)
    """Control actions started by alarms."""
    envelope: list[Envelope] = Field(default_factory=list)
    """Points a control action may write and the values allowed; a write outside it is refused."""
    max_actions: Annotated[int, Field(ge=1)] = 10
    """At most this many commands per `period`, all actions together."""
    period: PositiveDuration = 3600.0
    """The window of `max_actions`."""
    min_interval: Duration = 10.0
    """At most one command per device and point per this long (every write, whoever asks)."""
    operator_writes: bool = False
    """Allow writes a person asks for (`dcim write`, the HTTP API) while not armed."""
    verify_timeout: PositiveDuration = 10.0
    """A write counts as done when the point reads back as written within this time."""
    leak: LeakResponse = LeakResponse()
    """The tiered leak response."""


class CoolingPlant(StrictModel):
    """What the cooling-plant pack and the derived cooling metrics need to know of the site (rules.metrics)."""

    ashrae_class: Literal["W17", "W27", "W32", "W40", "W45"] = "W32"
    """The site's ASHRAE liquid-cooling class: facility supply above its maximum temperature is critical."""
    chiller_capacity_kw: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, examples=[{"chiller-1": 2000, "chiller-2": 2000}])
    """Rated cooling capacity (kW) per chiller id; a running chiller without one is taken to carry the load."""
    last_pump_budget_pct: Annotated[float, Field(gt=0, le=100)] = 50.0
    """A rack whose CDU runs on its last pump is judged against this share (%) of its power budget."""


class RulesConfig(StrictModel):
    """The rule engine (docs/rules.md)."""

    enabled: bool = True
    """Run the rule engine (rack metrics, alarms, notifications, control)."""
    # The schema names the packs the validator below accepts, so an editor flags a misspelt one too.
    packs: dict[str, bool] = Field(default_factory=lambda: dict.fromkeys(PACKS, True),
                                   json_schema_extra={"propertyNames": {"enum": list(PACKS)}},
                                   examples=[{"air-rack": True, "chiller": False}])
    """Built-in rule packs switched on or off; every pack not named stays on."""
    disable: list[Name] = Field(default_factory=list, examples=[["air-rack-phase-imbalance"]])
    """Single rules (built-in or own) switched off, by name."""
    rules: list[Rule] = Field(default_factory=list)
    """Own rules; one named like a built-in rule replaces it."""
    overrides: dict[Name, dict[str, Tuning]] = Field(default_factory=dict,
                                                     examples=[{"liquid-rack-power-budget": {"A01": {"warning": 85}}}])
    """Per rule name, per rack or device id: changes to that rule for that subject."""
    tick: PositiveDuration = 1.0
    """Rack metrics and time-based rules are computed this often."""
    stale_after: PositiveDuration = 15.0
    """A sample older than this no longer counts as the current value (rack metrics, rules)."""
    flow_lpm_per_kw: Annotated[float, Field(gt=0, le=100)] = 1.5
    """Coolant flow a liquid-cooled rack needs per kW it draws (l/min per kW)."""
    cooling: CoolingPlant = CoolingPlant()
    """The site's cooling plant."""
    communication: Communication = Communication()
    """The alarm for a device that stops answering."""
    control: ControlConfig = ControlConfig()
    """Writes to equipment: armed or not, actions, envelope, leak response."""
    notifications: NotifyConfig = NotifyConfig()
    """Where alarms are sent (hooks) and how (routes, grouping, repeats, rate limits)."""
    store: str = "alarms.db"
    """SQLite file of alarm state and history, relative to `state_dir`."""

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
    """A built-in rule pack (rules/packs/*.yaml)."""

    name: Name
    """Pack name."""
    description: str = ""
    """What the pack watches."""
    rules: list[Rule]
    """The pack's rules."""


@cache
def load_pack(name: str) -> Pack:
    """A built-in pack; a broken pack file is a bug of ours, so it raises rather than reports."""
    raw = yaml.load((PACK_DIR / f"{name}.yaml").read_text(),  # libyaml's parser, where PyYAML has it
                    Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
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
