"""What a hook type is: a configuration model and a sender, side by side in one file, registered by name.

    class FileHook(HookConfig):                    # the configuration under `notifications.hooks.NAME`
        type: Literal["jsonl"]
        path: str

    class FileSender(Hook):                        # made once per configured hook
        def __init__(self, name: str, config: FileHook) -> None: ...
        def render(self, notification) -> list[bytes]: ...      # queued in the hook's durable outbox
        async def send(self, body, session) -> None: ...        # raises HookError(transient=...)

    HOOK = HookType("jsonl", FileHook, FileSender)

Also here: the HTTP POST most hooks share, and `reveal` for secret fields.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Generic, TypeVar, get_args

from pydantic import Field, SecretStr

from dcim.core.config import PositiveDuration, StrictModel
from dcim.core.secrets import redact

if TYPE_CHECKING:
    import aiohttp

    # A type only: the notification model is built by rules.notify.
    from dcim.rules.hooks.notification import Notification

HttpUrl = Annotated[str, Field(pattern=r"^https?://\S+$")]


class HookConfig(StrictModel):
    """What every hook type's configuration has. A hook type adds `type: Literal[NAME]` and its own fields."""

    type: str
    """The hook type: webhook, pagerduty, slack, email, apprise (or one an installed plugin adds)."""
    timeout: PositiveDuration = 10.0
    """Time limit of one delivery attempt."""


def reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


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
    import aiohttp  # here, not at the top: the configuration imports the hooks, and a start-up error waits for it

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


C = TypeVar("C", bound=HookConfig)


@dataclass(frozen=True)
class HookType(Generic[C]):
    """A hook type as registered: its `type:` name, its configuration model, its sender."""

    name: str
    model: type[C]
    # Called once per configured hook with its name and configuration; may raise ValueError (a
    # configuration the sender cannot use) or RuntimeError (a missing optional package).
    sender: Callable[[str, C], Hook]

    def __post_init__(self) -> None:
        field = self.model.model_fields.get("type")
        if field is None or get_args(field.annotation) != (self.name,):
            raise TypeError(f"hook type {self.name!r}: its model needs `type: Literal[{self.name!r}]`")


