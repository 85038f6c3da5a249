"""On-call hooks: each turns a `Notification` into the messages of one channel and delivers them.

hook = make_hook("oncall", config.hooks["oncall"])
for body in hook.render(notification):   # queued in the hook's durable outbox
    ...
await hook.send(body, session)           # raises HookError(transient=...) when it fails

A hook type is one file: its configuration model and its sender side by side (see rules.hooks.base). The
built-in types register below, one line each; an installed package adds one through an entry point of the
group `dcim.hooks` naming its `HookType`:

    [project.entry-points."dcim.hooks"]
    jsonl = "dcim_jsonl:HOOK"
"""

from __future__ import annotations

from typing import Annotated, Any

from dcim.core.registry import Registry
from dcim.rules.hooks import apprise, email, pagerduty, slack, webhook
from dcim.rules.hooks.base import Hook, HookConfig, HookError, HookType, HttpUrl, post, reveal
from dcim.rules.union import RegistryUnion

__all__ = ["HOOK_TYPES", "Hook", "HookConfig", "HookError", "HookSpec", "HookType", "HttpUrl", "make_hook", "post",
           "reveal"]

HOOK_TYPES: Registry[HookType[Any]] = Registry("hook type", "dcim.hooks", lambda hook_type: hook_type.name)

HOOK_TYPES.register(webhook.HOOK)
HOOK_TYPES.register(pagerduty.HOOK)
HOOK_TYPES.register(slack.HOOK)
HOOK_TYPES.register(email.HOOK)
HOOK_TYPES.register(apprise.HOOK)

# The configuration of one hook: the model of the hook type its `type:` names.
HookSpec = Annotated[HookConfig, RegistryUnion(HOOK_TYPES, "type", lambda hook_type: hook_type.model)]


def make_hook(name: str, config: HookConfig) -> Hook:
    return HOOK_TYPES.get(config.type).sender(name, config)
