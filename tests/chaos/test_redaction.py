"""A malformed Slack webhook URL (the URL is the credential) never reaches a log or an error in full."""

from __future__ import annotations

import aiohttp
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

import dcim.rules.notify  # noqa: F401 - rules.hooks is imported through the notifier (import order)
from dcim.core.secrets import redact, redact_url
from dcim.rules.hooks.base import HookError
from dcim.rules.hooks.slack import SlackSender
from dcim.rules.notify.config import SlackHook

TOKEN = "T0000/B0000/XXXXXXXXXXXXXXXXsecret"


@pytest.mark.parametrize("url", [
    f"htps:/hooks.slack.com/services/{TOKEN}",          # scheme mistyped
    f"https://hooks.slack.com:99999/services/{TOKEN}",  # port out of range
    f"hooks.slack.com/services/{TOKEN}",                # no scheme at all
])
async def test_a_malformed_slack_url_is_not_in_the_hook_error(url: str) -> None:
    hook = SlackSender("slack", SlackHook(type="slack", url=SecretStr(url)))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(HookError) as caught, capture_logs() as logs:
            await hook.send(b"{}", session)
    text = f"{caught.value} {caught.value.__cause__} {logs}"
    assert "secret" not in text and "B0000" not in text, text
    assert caught.value.transient  # kept in the outbox until the configuration is fixed


def test_redact_keeps_only_scheme_and_host() -> None:
    assert redact_url(f"https://hooks.slack.com/services/{TOKEN}") == "https://hooks.slack.com/..."
    assert redact_url("https://user:hunter2@example.com/x") == "https://example.com/..."
    assert redact(f"bad URL https://hooks.slack.com/services/{TOKEN} given",
                  f"https://hooks.slack.com/services/{TOKEN}") == "bad URL https://hooks.slack.com/... given"
    assert redact("token abc123 refused", "abc123") == "token ********** refused"
