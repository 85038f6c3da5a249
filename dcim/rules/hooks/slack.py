"""Slack incoming webhook: a `text` fallback plus blocks (a header, one section per alarm, capped)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from dcim.core.secrets import Secret
from dcim.rules.hooks.base import Hook, HookConfig, HookType, post

if TYPE_CHECKING:
    import aiohttp

    from dcim.rules.hooks.notification import Notification


class SlackHook(HookConfig):
    """Slack incoming webhook. The URL itself is the credential, hence a secret reference."""

    type: Literal["slack"]
    """slack."""
    url: Secret
    """The incoming webhook's URL, as a reference (the URL is the credential)."""
    channel: str | None = Field(default=None, examples=["#facility-alarms"])
    """Channel to post to, where the webhook allows it; not set: the webhook's own."""
    username: str | None = None
    """Name to post as, where the webhook allows it."""

# Slack refuses messages with more than 50 blocks.
_MAX_ALARM_BLOCKS = 40


class SlackSender(Hook):
    def __init__(self, name: str, config: SlackHook) -> None:
        super().__init__(name)
        self.config = config

    def render(self, notification: Notification) -> list[bytes]:
        lines = notification.lines()
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": notification.title[:150]}},
        ]
        if notification.kind == "summary":
            detail = str(notification.extra.get("detail", ""))
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": detail[:3000] or "-"}})
        for line in lines[:_MAX_ALARM_BLOCKS]:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": line[:3000]}})
        if len(lines) > _MAX_ALARM_BLOCKS:
            more = f"... and {len(lines) - _MAX_ALARM_BLOCKS} more"
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": more}]})
        message: dict[str, Any] = {"text": notification.text[:3000], "blocks": blocks}
        if self.config.channel:
            message["channel"] = self.config.channel
        if self.config.username:
            message["username"] = self.config.username
        return [json.dumps(message).encode()]

    async def send(self, body: bytes, session: aiohttp.ClientSession) -> None:
        url = self.config.url.get_secret_value()
        await post(session, url, body, {"Content-Type": "application/json"}, self.config.timeout)


HOOK = HookType("slack", SlackHook, SlackSender)
