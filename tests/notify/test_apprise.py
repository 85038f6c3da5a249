"""apprise (optional) against a real local receiver, through its json:// channel."""

from __future__ import annotations

import aiohttp
import pytest

from dcim.core.events import AlarmState
from dcim.rules.hooks import HookError, make_hook
from dcim.rules.hooks.notification import Notification
from dcim.rules.notify.config import NotifyConfig
from tests.notify.conftest import event
from tests.receivers import HttpReceiver

pytest.importorskip("apprise")


def apprise_hook(monkeypatch: pytest.MonkeyPatch, url: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("APPRISE_URL", url)
    config = NotifyConfig.model_validate({"hooks": {"chat": {"type": "apprise", "urls": ["env:APPRISE_URL"],
                                                             "timeout": 3}}})
    return make_hook("chat", config.hooks["chat"])


async def test_apprise_json_target(receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    h = apprise_hook(monkeypatch, receiver.url.replace("http://", "json://") + "/apprise")
    alarm = event("A01")
    n = Notification("g", {"site": "hall-1", "rack": "A01"}, [alarm], frozenset({alarm.key}))
    async with aiohttp.ClientSession() as session:
        await h.send(h.render(n)[0], session)
        [req] = await receiver.wait_for(1)
        data = req.json()
        assert req.path == "/apprise"
        assert data["title"] == "[CRITICAL] hall-1 A01: 1 firing" and data["type"] == "failure"
        assert "rack-power on A01" in data["message"]
        receiver.respond(500)
        with pytest.raises(HookError) as err:
            await h.send(h.render(n)[0], session)
        assert err.value.transient
    resolved = Notification("g", {"rack": "A01"}, [event("A01", state=AlarmState.RESOLVED)], frozenset())
    assert b'"success"' in h.render(resolved)[0]


def test_apprise_url_it_cannot_parse_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="urls\\[0\\]"):
        apprise_hook(monkeypatch, "nosuchscheme://x")
