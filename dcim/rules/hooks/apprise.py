"""The long tail of channels (Teams, Telegram, Matrix, Discord, ntfy, ...) through apprise, optional:
`pip install apprise`, imported only when a hook of this type is made. Its plugins are synchronous;
`async_notify` runs them on worker threads, so the event loop never waits on them.

Every URL of the hook gets each message; when one of them fails the message is retried for all of them
(give a flaky channel a hook of its own).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from dcim.core.secrets import Secret
from dcim.rules.hooks.base import Hook, HookConfig, HookError, HookType

if TYPE_CHECKING:
    import aiohttp

    from dcim.rules.hooks.notification import Notification


class AppriseHook(HookConfig):
    """Any channel apprise knows (Teams, Telegram, Matrix, ...). URLs carry credentials: secret references."""

    type: Literal["apprise"]
    """apprise (needs the apprise package)."""
    urls: Annotated[list[Secret], Field(min_length=1)]
    """apprise URLs (e.g. msteams://..., tgram://...), each a secret reference: they carry credentials."""


class AppriseSender(Hook):
    def __init__(self, name: str, config: AppriseHook) -> None:
        try:
            import apprise  # optional, and slow to import: only for a configured hook of this type
        except ImportError:  # pragma: no cover - exercised only where apprise is not installed
            raise RuntimeError(f"hook {name}: type apprise needs the apprise package (pip install apprise)") from None
        super().__init__(name)
        self.config = config
        self.client = apprise.Apprise()
        for i, url in enumerate(config.urls):
            # Checked at start-up: a URL apprise cannot parse is a configuration error, not a retry.
            if not self.client.add(url.get_secret_value()):
                raise ValueError(f"hook {name}: urls[{i}] is not a URL apprise knows")

    def render(self, notification: Notification) -> list[bytes]:
        if notification.kind == "summary" or notification.severity.value == "critical":
            kind = "failure" if notification.status == "firing" else "success"
        else:
            kind = "warning" if notification.status == "firing" else "success"
        message = {"title": notification.title, "body": "\n".join(notification.lines()) or notification.title,
                   "type": kind}
        return [json.dumps(message).encode()]

    async def send(self, body: bytes, session: aiohttp.ClientSession) -> None:
        message: dict[str, Any] = json.loads(body)
        result = await self.client.async_notify(
            body=message["body"], title=message["title"], notify_type=message["type"],
            timeout=self.config.timeout,
        )
        if not result:
            raise HookError(f"apprise could not deliver ({getattr(result, 'status', 'failed')})", transient=True)


HOOK = HookType("apprise", AppriseHook, AppriseSender)
