"""Hook types come from a registry: the built-ins, and docs/contributing.md's worked example `jsonl`,
installed as a package (entry point `dcim.hooks`) for `dcim schema` / `dcim check`, and delivering a real
notification through the notifier."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.app.config import ConfigError, parse_config
from dcim.rules.clock import FakeClock
from dcim.rules.hooks import HOOK_TYPES, HookType, make_hook
from dcim.rules.hooks.webhook import WebhookHook, WebhookSender
from dcim.rules.notify import Notifier
from dcim.rules.notify.config import NotifyConfig
from tests.helpers import wait_until
from tests.notify.conftest import FAST_RETRY, advance, event, running
from tests.rules.rig import hall
from tests.toy_plugins import REPO, dcim, install_toys, modules, section


def test_the_builtin_hook_types_are_registered() -> None:
    assert {"webhook", "pagerduty", "slack", "email", "apprise"} <= set(HOOK_TYPES.names())
    config = NotifyConfig.model_validate({"hooks": {"ops": {"type": "webhook", "url": "http://127.0.0.1:9/x"}}})
    hook = make_hook("ops", config.hooks["ops"])
    assert isinstance(config.hooks["ops"], WebhookHook) and isinstance(hook, WebhookSender)


def test_a_hook_model_names_its_type() -> None:
    with pytest.raises(TypeError, match=r"needs `type: Literal\['teams'\]`"):
        HookType("teams", WebhookHook, WebhookSender)


def test_the_hooks_import_on_their_own() -> None:
    # rules.notify imports the hooks; the hooks must not need rules.notify first (a plugin imports them).
    result = subprocess.run([sys.executable, "-c", "import dcim.rules.hooks"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr


def test_an_unknown_type_is_reported_at_its_path(tmp_path: Path) -> None:
    raw = hall(tmp_path, {"notifications": {"hooks": {"log": {"type": "jsonl", "path": "x"}}}})
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    [(path, message)] = caught.value.errors
    assert path == "rules.notifications.hooks.log.type"
    assert message.startswith("unknown hook type 'jsonl' (known: webhook, pagerduty, slack, email, apprise")


# ---- the worked example, installed as a plugin -------------------------------------------------------


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("site-packages")
    groups = install_toys(dest, "Adding a hook type")
    assert groups == {"dcim.hooks": {"jsonl": "dcim_jsonl:HOOK"}}
    return dest


def config_file(tmp_path: Path, name: str, hook: dict[str, Any]) -> Path:
    path = tmp_path / name
    notifications = {"hooks": {"audit-log": hook}, "routes": [{"hooks": ["audit-log"]}]}
    path.write_text(yaml.safe_dump(hall(tmp_path / "state", {"notifications": notifications})))
    return path


def test_jsonl_is_in_dcim_schema(plugins: Path) -> None:
    result = dcim(plugins, "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    union = schema["$defs"]["NotifyConfig"]["properties"]["hooks"]["patternProperties"]
    [hook] = union.values()
    assert hook["discriminator"]["mapping"]["jsonl"] == "#/$defs/JsonlHook"
    assert {"type", "path", "timeout"} <= set(schema["$defs"]["JsonlHook"]["properties"])


def test_dcim_check_accepts_jsonl_and_reports_its_mistakes(plugins: Path, tmp_path: Path) -> None:
    good = config_file(tmp_path, "good.yaml", {"type": "jsonl", "path": str(tmp_path / "n.jsonl")})
    result = dcim(plugins, "check", "-c", str(good))
    assert result.returncode == 0, result.stderr
    bad = config_file(tmp_path, "bad.yaml", {"type": "jsonl", "pth": "n.jsonl", "timeout": "soon"})
    result = dcim(plugins, "check", "-c", str(bad))
    assert result.returncode == 1
    assert "rules.notifications.hooks.audit-log.pth: unknown key (typo?)" in result.stderr
    assert "rules.notifications.hooks.audit-log.path: Field required" in result.stderr
    assert "rules.notifications.hooks.audit-log.timeout: not a duration" in result.stderr


# ---- the worked example delivering through the notifier -----------------------------------------------


@pytest.fixture
def jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HookType[Any]]:
    """`dcim_jsonl` from the doc, registered the way a built-in type is: one `HOOK_TYPES.register` line."""
    dest = tmp_path / "toys"
    dest.mkdir()
    for name, source in modules(section("Adding a hook type")).items():
        (dest / name).write_text(source)
    monkeypatch.syspath_prepend(str(dest))
    hook_type: HookType[Any] = importlib.import_module("dcim_jsonl").HOOK
    HOOK_TYPES.register(hook_type)
    yield hook_type
    HOOK_TYPES.unregister("jsonl")
    sys.modules.pop("dcim_jsonl", None)


async def test_the_notifier_delivers_to_jsonl(jsonl: HookType[Any], tmp_path: Path) -> None:
    log = tmp_path / "notifications.jsonl"
    config = NotifyConfig.model_validate({
        "hooks": {"audit-log": {"type": "jsonl", "path": str(log)}}, "routes": [{"hooks": ["audit-log"]}],
        "group_wait": 10, "group_interval": 60, "retry": FAST_RETRY,
    })
    clock = FakeClock()
    notifier = Notifier(config, tmp_path / "state", clock=clock)
    async with running(notifier):
        notifier.submit(event("A01", "rack-power"))
        await advance(clock, notifier, 10)
        await wait_until(lambda: notifier.deliveries["audit-log"].delivered == 1)
        # Acknowledged: the message left the hook's outbox.
        await wait_until(lambda: notifier.outboxes["audit-log"].depth == 0)
    [line] = log.read_text().splitlines()
    body = json.loads(line)
    assert body["kind"] == "alarms" and body["status"] == "firing"
    assert [a["key"] for a in body["alarms"]] == ["rack-power/A01"]
