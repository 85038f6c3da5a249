"""Each hook against a real local receiver: what arrives is what the channel expects."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from dcim.core.events import AlarmState, Severity
from dcim.rules.hooks import HookError, make_hook
from dcim.rules.hooks.notification import Notification
from dcim.rules.hooks.pagerduty import dedup_key
from dcim.rules.hooks.webhook import verify_signature
from dcim.rules.notify.config import NotifyConfig
from tests.notify.conftest import event
from tests.receivers import HttpReceiver, SmtpReceiver


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def notification(*states: AlarmState, repeat: bool = False) -> Notification:
    alarms = [event("A01", f"rule-{i}", state=state) for i, state in enumerate(states)]
    return Notification("0|site=hall-1|rack=A01", {"site": "hall-1", "rack": "A01"}, alarms,
                        frozenset(a.key for a in alarms), repeat=repeat, ts_ns=time.time_ns())


def hook(raw: dict[str, object], name: str = "h"):  # type: ignore[no-untyped-def]
    config = NotifyConfig.model_validate({"hooks": {name: raw}})
    return make_hook(name, config.hooks[name])


async def test_webhook_body_and_signature(
    receiver: HttpReceiver, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    h = hook({"type": "webhook", "url": receiver.url + "/dcim", "secret": "env:HOOK_SECRET",
              "headers": {"X-Team": "facilities"}})
    n = notification(AlarmState.FIRING, AlarmState.RESOLVED)
    [body] = h.render(n)
    await h.send(body, session)
    [req] = await receiver.wait_for(1)
    assert req.path == "/dcim" and req.headers["content-type"] == "application/json"
    assert req.headers["x-team"] == "facilities"
    # Verified independently of the sender's code: HMAC-SHA256 over "<timestamp>.<body>".
    ts = req.headers["x-dcim-timestamp"]
    expected = hmac.new(b"s3cret", ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
    assert req.headers["x-dcim-signature"] == "sha256=" + expected
    assert verify_signature("s3cret", req.body, ts, req.headers["x-dcim-signature"])
    assert not verify_signature("other", req.body, ts, req.headers["x-dcim-signature"])
    assert not verify_signature("s3cret", req.body + b" ", ts, req.headers["x-dcim-signature"])
    # A replay later than the tolerance is refused.
    assert not verify_signature("s3cret", req.body, ts, req.headers["x-dcim-signature"], now=int(ts) + 301)
    data = req.json()
    assert data["status"] == "firing" and data["counts"] == {"firing": 1, "resolved": 1}
    assert data["group"]["labels"] == {"site": "hall-1", "rack": "A01"}
    assert {a["state"] for a in data["alarms"]} == {"firing", "resolved"}
    assert data["alarms"][0]["value"] == 61.5 and data["alarms"][0]["changed"] is True
    assert len(req.headers["idempotency-key"]) == 32


async def test_webhook_without_secret_is_unsigned(receiver: HttpReceiver, session: aiohttp.ClientSession) -> None:
    h = hook({"type": "webhook", "url": receiver.url + "/x"})
    await h.send(h.render(notification(AlarmState.FIRING))[0], session)
    [req] = await receiver.wait_for(1)
    assert "x-dcim-signature" not in req.headers and "x-dcim-timestamp" in req.headers


async def test_pagerduty_trigger_and_resolve(
    receiver: HttpReceiver, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PD_KEY", "R0UTINGKEY0123456789012345678901")
    receiver.respond(202, b'{"status":"success","dedup_key":"x"}', content_type="application/json")
    h = hook({"type": "pagerduty", "routing_key": "env:PD_KEY", "url": receiver.url + "/v2/enqueue"})
    bodies = h.render(notification(AlarmState.FIRING, AlarmState.RESOLVED))
    assert len(bodies) == 2  # one event per alarm
    for body in bodies:
        await h.send(body, session)
        assert b"R0UTINGKEY" not in body  # the key is added when sending, never stored in the outbox
    trigger, resolve = [r.json() for r in await receiver.wait_for(2)]
    assert trigger["routing_key"] == "R0UTINGKEY0123456789012345678901"
    assert trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == dedup_key("rule-0/A01") == "dcim/rule-0/A01"
    payload = trigger["payload"]
    assert payload["severity"] == "critical" and payload["source"] == "A01"
    assert payload["summary"].startswith("A01 rule-0") and payload["timestamp"].endswith("Z")
    assert payload["custom_details"]["value"] == 61.5 and payload["group"] == "A01"
    assert resolve == {"event_action": "resolve", "dedup_key": "dcim/rule-1/A01",
                       "routing_key": "R0UTINGKEY0123456789012345678901"}


def test_pagerduty_dedup_key_is_stable_and_bounded() -> None:
    assert dedup_key("rack-power/A01") == dedup_key("rack-power/A01")
    long = dedup_key("x" * 400)
    assert len(long) <= 255 and long == dedup_key("x" * 400)


def test_pagerduty_sends_only_news_and_reminders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PD_KEY", "k")
    h = hook({"type": "pagerduty", "routing_key": "env:PD_KEY"})
    alarms = [event("A01", "a"), event("A01", "b", acknowledged=True)]
    context_only = Notification("g", {}, alarms, frozenset({"a/A01"}))
    assert len(h.render(context_only)) == 1
    reminder = Notification("g", {}, alarms, frozenset(), repeat=True)
    actions = [b'"acknowledge"' in b for b in h.render(reminder)]
    assert actions == [False, True]


async def test_slack_blocks(
    receiver: HttpReceiver, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_URL", receiver.url + "/services/T000/B000/abcd")
    h = hook({"type": "slack", "url": "env:SLACK_URL", "channel": "#noc"})
    await h.send(h.render(notification(AlarmState.FIRING))[0], session)
    [req] = await receiver.wait_for(1)
    data = req.json()
    assert req.path == "/services/T000/B000/abcd"
    assert data["channel"] == "#noc" and data["text"].startswith("[CRITICAL] hall-1 A01: 1 firing")
    assert data["blocks"][0]["type"] == "header"
    assert "rule-0" in data["blocks"][1]["text"]["text"]


async def test_http_errors_are_classified(receiver: HttpReceiver, session: aiohttp.ClientSession) -> None:
    h = hook({"type": "webhook", "url": receiver.url + "/x", "timeout": 2})
    body = h.render(notification(AlarmState.FIRING))[0]
    receiver.respond(503, "busy")
    with pytest.raises(HookError) as err:
        await h.send(body, session)
    assert err.value.transient and "503" in str(err.value)
    receiver.respond(400, "bad payload")
    with pytest.raises(HookError) as err:
        await h.send(body, session)
    assert not err.value.transient
    receiver.stop()
    with pytest.raises(HookError) as err:
        await h.send(body, session)
    assert err.value.transient


async def test_email_over_starttls_with_auth(session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    with SmtpReceiver(starttls=True, username="dcim", password="pw") as smtp:
        monkeypatch.setenv("SMTP_PW", "pw")
        h = hook({"type": "email", "host": smtp.host, "port": smtp.port, "security": "starttls",
                  "username": "dcim", "password": "env:SMTP_PW", "ca_file": smtp.cafile,
                  "from": "dcim@hall-1.example", "to": ["noc@example.org", "oncall@example.org"]})
        n = notification(AlarmState.FIRING)
        await h.send(h.render(n)[0], session)
        [msg] = await smtp.wait_for(1)
    assert msg.tls and msg.login == "dcim"
    assert msg.mail_from == "dcim@hall-1.example"
    assert msg.rcpt_tos == ["noc@example.org", "oncall@example.org"]
    assert msg.subject == "[dcim] [CRITICAL] hall-1 A01: 1 firing"
    assert msg.message["To"] == "noc@example.org, oncall@example.org"
    assert msg.message["Message-ID"].endswith("@hall-1.example>")
    assert msg.message["X-Dcim-Status"] == "firing"
    assert "FIRING critical A01 rule-0: rule-0 on A01 value=61.5 threshold=57" in msg.text()


async def test_email_implicit_tls(session: aiohttp.ClientSession) -> None:
    with SmtpReceiver(implicit_tls=True) as smtp:
        h = hook({"type": "email", "host": smtp.host, "port": smtp.port, "security": "tls",
                  "ca_file": smtp.cafile, "from": "dcim@x.example", "to": ["noc@x.example"]})
        await h.send(h.render(notification(AlarmState.RESOLVED))[0], session)
        [msg] = await smtp.wait_for(1)
    assert msg.tls and msg.subject.startswith("[dcim] [RESOLVED]")


async def test_email_failures_are_classified(session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    with SmtpReceiver(starttls=True, username="dcim", password="pw") as smtp:
        monkeypatch.setenv("SMTP_PW", "wrong")
        # timeout 1: after a refused AUTH, aiosmtplib waits for its read timeout against aiosmtpd.
        h = hook({"type": "email", "host": smtp.host, "port": smtp.port, "username": "dcim", "timeout": 1,
                  "password": "env:SMTP_PW", "ca_file": smtp.cafile, "from": "a@x.example", "to": ["b@x.example"]})
        body = h.render(notification(AlarmState.FIRING))[0]
        with pytest.raises(HookError) as err:  # bad credentials: the hook's problem, kept for a fix
            await h.send(body, session)
        assert err.value.transient and smtp.auth_failures >= 1
    with SmtpReceiver() as smtp:
        h = hook({"type": "email", "host": smtp.host, "port": smtp.port, "security": "none",
                  "from": "a@x.example", "to": ["b@x.example"]})
        body = h.render(notification(AlarmState.FIRING))[0]
        smtp.respond("451 Try again later")
        with pytest.raises(HookError) as err:
            await h.send(body, session)
        assert err.value.transient
        smtp.respond("554 Rejected")
        with pytest.raises(HookError) as err:
            await h.send(body, session)
        assert not err.value.transient


def test_severity_and_titles() -> None:
    n = notification(AlarmState.FIRING, repeat=True)
    assert n.severity is Severity.CRITICAL and n.title.endswith("(reminder)")
    assert notification(AlarmState.RESOLVED).title == "[RESOLVED] hall-1 A01: 1 resolved"
