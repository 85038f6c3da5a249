"""The configuration sample of docs/notifications.md loads through the daemon's own parser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dcim.app.config import ConfigError, parse_config
from dcim.rules.notify.config import EmailHook, PagerDutyHook, WebhookHook

DOC = Path(__file__).resolve().parents[2] / "docs" / "notifications.md"


def sample() -> dict[str, object]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    raw = yaml.safe_load(blocks[0])
    assert isinstance(raw, dict)
    return raw


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DCIM_HOOK_SECRET", "hook-secret")
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", "pd-key")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/X")
    (tmp_path / "dcim_smtp-password").write_text("smtp-pw\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))


def test_the_documented_sample_loads(secrets: None) -> None:
    config = parse_config(sample(), "docs/notifications.md")
    notify = config.rules.notifications
    assert list(notify.hooks) == ["ops-webhook", "oncall", "noc-slack", "noc-mail"]
    webhook, pagerduty, mail = notify.hooks["ops-webhook"], notify.hooks["oncall"], notify.hooks["noc-mail"]
    assert isinstance(webhook, WebhookHook) and webhook.secret is not None
    assert webhook.secret.get_secret_value() == "hook-secret" and webhook.timeout == 10
    assert isinstance(pagerduty, PagerDutyHook) and pagerduty.routing_key.get_secret_value() == "pd-key"
    assert isinstance(mail, EmailHook) and mail.password is not None
    assert mail.password.get_secret_value() == "smtp-pw" and mail.sender == "dcim@hall-1.example.org"
    assert [r.continue_ for r in notify.routes] == [True, False, False]
    assert notify.routes[0].group_wait == 10 and notify.group_interval == 300 and notify.repeat_interval == 14400
    assert notify.rate_limit.per_hook_per_minute == 20


def errors_of(raw: dict[str, object]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    return err.value.errors


def test_mistakes_are_reported_with_their_path(secrets: None) -> None:
    raw = sample()
    notify = raw["rules"]["notifications"]  # type: ignore[index]
    notify["routes"][1]["hooks"] = ["ops-webhok"]
    errors = errors_of(raw)
    assert any(path == "rules.notifications" and "unknown hook 'ops-webhok'" in msg for path, msg in errors)

    raw = sample()
    raw["rules"]["notifications"]["hooks"]["oncall"]["routing_key"] = "R0123456789"  # type: ignore[index]
    [(path, msg)] = errors_of(raw)
    assert path == "rules.notifications.hooks.oncall.routing_key" and "never given inline" in msg
    assert "R0123456789" not in msg

    raw = sample()
    raw["rules"]["notifications"]["hooks"]["noc-mail"]["secutiry"] = "tls"  # type: ignore[index]
    raw["rules"]["notifications"]["hooks"]["ops-webhook"]["type"] = "teams"  # type: ignore[index]
    paths = {path for path, _ in errors_of(raw)}
    assert "rules.notifications.hooks.noc-mail.secutiry" in paths
    assert any(p.startswith("rules.notifications.hooks.ops-webhook") for p in paths)

    raw = sample()
    del raw["rules"]["notifications"]["hooks"]["noc-mail"]["username"]  # type: ignore[index]
    [(path, msg)] = errors_of(raw)
    assert path == "rules.notifications.hooks.noc-mail" and "username and password go together" in msg
