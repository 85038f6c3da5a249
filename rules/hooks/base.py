"""The interface of a hook, and the HTTP POST most of them share."""

from __future__ import annotations

import abc

import aiohttp

from dcim.core.secrets import redact
from rules.notify.model import Notification


class HookError(Exception):
    """A delivery failed. `transient`: worth retrying (connection refused, timeout, 5xx, 429)."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class Hook(abc.ABC):
    def __init__(self, name: str) -> None:
        self.name = name

    @abc.abstractmethod
    def render(self, notification: Notification) -> list[bytes]:
        """The messages to send for a notification, each delivered (and retried) on its own.
        Credentials are added by `send`, so they never rest in the outbox on disk."""

    @abc.abstractmethod
    async def send(self, body: bytes, session: aiohttp.ClientSession) -> None:
        """Deliver one rendered message. Raises HookError."""


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], timeout_s: float
) -> None:
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            if response.status < 300:
                return
            detail = (await response.text())[:200]
            # Only a refusal of the message itself is final; anything else (5xx, 429, a revoked key or a
            # wrong URL: 401/403/404) is the hook's problem, and the message waits in the outbox for it.
            transient = response.status not in (400, 413, 422)
            raise HookError(f"HTTP {response.status}: {detail}", transient=transient)
    except aiohttp.ClientError as err:
        # aiohttp puts a malformed URL in its message: for Slack and apprise the URL is the credential.
        raise HookError(redact(f"{type(err).__name__}: {err}", url), transient=True) from None
    except TimeoutError as err:
        raise HookError(f"no answer within {timeout_s:g} s", transient=True) from err
