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
    """Alarm severities accepted."""
    rule: list[str] | None = Field(default=None, examples=[["cdu-leak", "rack-*"]])
    """Rule names accepted (globs)."""
    site: list[str] | None = None
    """Site ids accepted (globs)."""
    room: list[str] | None = None
    """Room ids accepted (globs)."""
    row: list[str] | None = None
    """Row ids accepted (globs)."""
    rack: list[str] | None = Field(default=None, examples=[["A*"]])
    """Rack ids accepted (globs)."""
    device: list[str] | None = None
    """Device ids accepted (globs)."""
    cdu: list[str] | None = None
    """Ids of the CDU serving the alarm's rack accepted (globs)."""


class Route(StrictModel):
    """Which alarms go to which hooks. Routes are tried in order; the first that matches takes the alarm."""

    match: Match = Match()
    """The alarms this route takes; empty: every alarm."""
    hooks: Annotated[list[HookName], Field(min_length=1, examples=[["oncall", "mail"]])]
    """Names of the hooks (under `hooks`) the alarms go to."""
    continue_: bool = Field(default=False, alias="continue")
    """Keep trying the next routes after this one matched."""
    group_by: list[Label] | None = None
    """This route's grouping labels; not set: the section's `group_by`."""
    group_wait: Duration | None = None
    """This route's `group_wait`; not set: the section's."""
    group_interval: PositiveDuration | None = None
    """This route's `group_interval`; not set: the section's."""
    repeat_interval: Duration | None = None
    """This route's `repeat_interval`; not set: the section's."""


class RateLimit(StrictModel):
    """Bounds for alarm storms, per rolling minute. What is over the bound is counted and summarised in one
    "N more notifications" message when the minute is over."""

    per_hook_per_minute: Annotated[int, Field(ge=1)] = 20
    """Notifications per hook per minute, at most."""
    global_per_minute: Annotated[int, Field(ge=1)] = 60
    """Notifications per minute over all hooks, at most."""


class Retry(StrictModel):
    """Retries of a failed delivery (a hook that is down, a timeout, HTTP 5xx or 429)."""

    max_attempts: Annotated[int, Field(ge=0)] = 0
    """Attempts per message; 0: retry until delivered (the outbox bound still applies)."""
    initial_backoff: PositiveDuration = 1.0
    """Wait before the first retry; it doubles with each retry."""
    max_backoff: PositiveDuration = 300.0
    """Longest wait between two retries."""
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Each wait is multiplied by a random factor between 1 - jitter and 1."""


def _default_group_by() -> list[Label]:
    return ["site", "rack"]


class NotifyConfig(StrictModel):
    """Notifications of alarms to people (docs/notifications.md)."""

    enabled: bool = True
    """Send notifications."""
    hooks: dict[HookName, Hook] = Field(default_factory=dict)
    """Named destinations (webhook, pagerduty, slack, email, apprise); their `type` selects their fields."""
    routes: list[Route] = Field(default_factory=list)
    """Which alarms go to which hooks, tried in order."""
    group_by: list[Label] = Field(default_factory=_default_group_by)
    """One notification for a burst of alarms sharing these labels (by default: one per rack)."""
    group_wait: Duration = 30.0
    """Wait this long after a group's first alarm for others to join it."""
    group_interval: PositiveDuration = 300.0
    """Then at most one notification per group per interval for further changes."""
    repeat_interval: Duration = 14400.0
    """Remind of still-firing, unacknowledged alarms this often; 0 turns reminders off."""
    send_resolved: bool = True
    """Notify when alarms resolve, too."""
    rate_limit: RateLimit = RateLimit()
    """Bounds for alarm storms."""
    retry: Retry = Retry()
    """Retries of failed deliveries."""
    outbox_max_items: Annotated[int, Field(ge=10)] = 10_000
    """Bound of each hook's durable outbox (in state_dir); past it the oldest are dropped and counted."""

    @model_validator(mode="after")
    def _routes_name_hooks(self) -> NotifyConfig:
        for i, route in enumerate(self.routes):
            for name in route.hooks:
                if name not in self.hooks:
                    known = ", ".join(self.hooks) or "none defined"
                    raise ValueError(f"routes[{i}] names unknown hook {name!r} (hooks: {known})")
        return self

