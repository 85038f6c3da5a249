"""On-call hooks: each turns a `Notification` into the messages of one channel and delivers them.

hook = make_hook("oncall", config.hooks["oncall"])
for body in hook.render(notification):   # queued in the hook's durable outbox
    ...
await hook.send(body, session)           # raises HookError(transient=...) when it fails
"""

from __future__ import annotations

from rules.hooks.base import Hook, HookError
from rules.hooks.email import EmailSender
from rules.hooks.pagerduty import PagerDutySender
from rules.hooks.slack import SlackSender
from rules.hooks.webhook import WebhookSender
from rules.notify.config import AppriseHook, EmailHook, PagerDutyHook, SlackHook, WebhookHook

__all__ = ["Hook", "HookError", "make_hook"]


def make_hook(name: str, config: WebhookHook | PagerDutyHook | SlackHook | EmailHook | AppriseHook) -> Hook:
    if isinstance(config, WebhookHook):
        return WebhookSender(name, config)
    if isinstance(config, PagerDutyHook):
        return PagerDutySender(name, config)
    if isinstance(config, SlackHook):
        return SlackSender(name, config)
    if isinstance(config, EmailHook):
        return EmailSender(name, config)
    # Imported here: apprise is an optional dependency.
    from rules.hooks.apprise import AppriseSender

    hook: Hook = AppriseSender(name, config)
    return hook
