"""Configuration of notifications: named hooks, routes to them, grouping, repeat, rate limits, retries.

Mounted in the rule engine's configuration as `rules.notifications`:

    notifications:
      hooks:
        oncall: {type: pagerduty, routing_key: env:PD_ROUTING_KEY}
        ops-hook: {type: webhook, url: https://ops.example/dcim, secret: file:/etc/dcim/hook.secret}
        mail: {type: email, host: smtp.example, from: dcim@example, to: [noc@example]}
      routes:
        - {match: {severity: [critical]}, hooks: [oncall, mail], continue: true}
        - {match: {room: [hall-1]}, hooks: [ops-hook]}
      group_wait: 30s
      repeat_interval: 4h

Routes are tried in order; the first that matches an alarm takes it, unless it says `continue: true`, in
which case the next matching routes take it too (as in Prometheus Alertmanager).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from dcim.core.config import Duration, PositiveDuration, StrictModel
from dcim.rules.hooks import HookSpec
from dcim.rules.hooks import reveal as reveal

# The built-in hook models, for importers of this module; a hook type's model lives with its sender.
from dcim.rules.hooks.apprise import AppriseHook as AppriseHook
from dcim.rules.hooks.email import EmailHook as EmailHook
from dcim.rules.hooks.pagerduty import PagerDutyHook as PagerDutyHook
from dcim.rules.hooks.slack import SlackHook as SlackHook
from dcim.rules.hooks.webhook import WebhookHook as WebhookHook

HookName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
# Labels an alarm carries that routes can match and groups can be formed by.
Label = Literal["site", "room", "row", "rack", "device", "cdu", "rule", "severity", "subject"]
# One hook's configuration, of the type its `type:` names (rules.hooks: built-ins and installed ones).
Hook = HookSpec


class Match(StrictModel):
    """Every given field must match; each is a list of accepted values (shell-style globs: `A*`)."""

    severity: list[Literal["warning", "critical"]] | None = None
    rule: list[str] | None = None
    site: list[str] | None = None
    room: list[str] | None = None
    row: list[str] | None = None
    rack: list[str] | None = None
    device: list[str] | None = None
    cdu: list[str] | None = None


class Route(StrictModel):
    match: Match = Match()
    hooks: Annotated[list[HookName], Field(min_length=1)]
    # Keep trying the next routes after this one matched.
    continue_: bool = Field(default=False, alias="continue")
    # Per-route overrides of the defaults below.
    group_by: list[Label] | None = None
    group_wait: Duration | None = None
    group_interval: PositiveDuration | None = None
    repeat_interval: Duration | None = None


class RateLimit(StrictModel):
    """Bounds for alarm storms, per rolling minute. What is over the bound is counted and summarised in one
    "N more notifications" message when the minute is over."""

    per_hook_per_minute: Annotated[int, Field(ge=1)] = 20
    global_per_minute: Annotated[int, Field(ge=1)] = 60


class Retry(StrictModel):
    # 0: retry until delivered (the outbox bound still applies).
    max_attempts: Annotated[int, Field(ge=0)] = 0
    initial_backoff: PositiveDuration = 1.0
    max_backoff: PositiveDuration = 300.0
    # Exponential backoff multiplied by a random factor in [1 - jitter, 1].
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.5


def _default_group_by() -> list[Label]:
    return ["site", "rack"]


class NotifyConfig(StrictModel):
    enabled: bool = True
    hooks: dict[HookName, Hook] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    # One notification for a burst of alarms sharing these labels (by default: one rack).
    group_by: list[Label] = Field(default_factory=_default_group_by)
    # Wait this long after a group's first alarm for others to join it.
    group_wait: Duration = 30.0
    # Then at most one notification per group per interval for further changes.
    group_interval: PositiveDuration = 300.0
    # Remind of still-firing, unacknowledged alarms; 0 turns reminders off.
    repeat_interval: Duration = 14400.0
    send_resolved: bool = True
    rate_limit: RateLimit = RateLimit()
    retry: Retry = Retry()
    # Bound of each hook's durable outbox; past it the oldest are dropped and counted.
    outbox_max_items: Annotated[int, Field(ge=10)] = 10_000

    @model_validator(mode="after")
    def _routes_name_hooks(self) -> NotifyConfig:
        for i, route in enumerate(self.routes):
            for name in route.hooks:
                if name not in self.hooks:
                    known = ", ".join(self.hooks) or "none defined"
                    raise ValueError(f"routes[{i}] names unknown hook {name!r} (hooks: {known})")
        return self

