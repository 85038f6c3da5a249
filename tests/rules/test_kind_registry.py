"""Rule kinds come from a registry: the built-ins, and docs/contributing.md's worked example `band`,
installed as a package (entry point `dcim.rule_kinds`) for `dcim schema` / `dcim check`, and registered
with its one line for the engine."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from dcim.app.config import ConfigError, parse_config
from dcim.core.events import AlarmState, Severity
from dcim.core.metrics import REGISTRY
from dcim.rules.kinds import RULE_KINDS, Assessment, RuleKind
from dcim.rules.kinds.threshold import LimitCondition, LimitRule, ThresholdRule
from tests.rules.rig import Rig, hall
from tests.toy_plugins import dcim, install_toys, modules, section

NO_PACKS = {"air-rack": False, "liquid-rack": False, "cdu-loop": False, "chiller": False}
BAND = {"name": "cdu-supply-band", "scope": {"devices": {"ids": ["cdu-1"]}}, "metric": "supply_temp_c",
        "kind": "band", "low": 18, "high": 32, "for": "10s", "hysteresis": 0.5, "clear_after": "20s"}


def test_the_builtin_kinds_are_registered() -> None:
    assert {"threshold", "rate", "state"} <= set(RULE_KINDS.names())


def test_a_kind_model_names_its_kind() -> None:
    with pytest.raises(TypeError, match=r"needs `kind: Literal\['ranged'\]`"):
        RuleKind("ranged", ThresholdRule, LimitCondition)


def test_an_unknown_kind_is_reported_at_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(hall(tmp_path, {"packs": NO_PACKS, "rules": [BAND]}))
    errors = dict(caught.value.errors)
    assert errors["rules.rules[0].kind"].startswith("unknown rule kind 'band' (known: threshold, rate, state")


# ---- the worked example, installed as a plugin -------------------------------------------------------


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("site-packages")
    groups = install_toys(dest, "Adding a rule kind")
    assert groups == {"dcim.rule_kinds": {"band": "dcim_band:KIND"}}
    return dest


def config_file(tmp_path: Path, name: str, rules: list[dict[str, Any]]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(hall(tmp_path / "state", {"packs": NO_PACKS, "rules": rules})))
    return path


def test_band_is_in_dcim_schema(plugins: Path) -> None:
    result = dcim(plugins, "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    union = schema["$defs"]["RulesConfig"]["properties"]["rules"]["items"]
    assert union["discriminator"]["mapping"]["band"] == "#/$defs/BandRule"
    assert {"low", "high", "severity", "for", "hysteresis"} <= set(schema["$defs"]["BandRule"]["properties"])


def test_dcim_check_accepts_band_and_reports_its_mistakes(plugins: Path, tmp_path: Path) -> None:
    good = config_file(tmp_path, "good.yaml", [BAND])
    result = dcim(plugins, "check", "-c", str(good))
    assert result.returncode == 0, result.stderr
    bad = config_file(tmp_path, "bad.yaml", [
        {**{k: v for k, v in BAND.items() if k != "high"}, "hihg": 32},
        {**BAND, "name": "upside-down", "low": 40},
    ])
    result = dcim(plugins, "check", "-c", str(bad))
    assert result.returncode == 1
    assert "rules.rules[0].hihg: unknown key (typo?)" in result.stderr
    assert "rules.rules[0].high: Field required" in result.stderr
    assert "rules.rules[1]: `low` must be below `high`" in result.stderr


# ---- the worked example in the engine ------------------------------------------------------------------


@pytest.fixture
def band(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RuleKind[Any]]:
    """`dcim_band` from the doc, registered the way a built-in kind is: one `RULE_KINDS.register` line."""
    dest = tmp_path / "toys"
    dest.mkdir()
    for name, source in modules(section("Adding a rule kind")).items():
        (dest / name).write_text(source)
    monkeypatch.syspath_prepend(str(dest))
    kind: RuleKind[Any] = importlib.import_module("dcim_band").KIND
    RULE_KINDS.register(kind)
    yield kind
    RULE_KINDS.unregister("band")
    sys.modules.pop("dcim_band", None)


def drive(r: Rig, seconds: int, **values: Any) -> None:
    for _ in range(seconds):
        r.clock.advance(1)
        r.cdu("cdu-1", **values)
        r.service.tick()


async def test_band_fires_and_resolves_in_the_engine(band: RuleKind[Any], tmp_path: Path) -> None:
    r = Rig(hall(tmp_path, {"packs": NO_PACKS, "rules": [BAND]}))
    drive(r, 5, supply_temp_c=25.0)
    drive(r, 10, supply_temp_c=33.0)   # above the band: first seen, then pending 9 s of `for: 10s`
    assert r.notifier.events == []
    drive(r, 1, supply_temp_c=33.0)
    assert r.notifier.fired() == ["cdu-supply-band/cdu-1"]
    fired = r.notifier.events[0]
    assert fired.severity is Severity.WARNING and fired.value == 33.0 and fired.threshold == 32.0
    assert fired.message == "cdu-1: supply_temp_c 33 outside [18, 32]"
    drive(r, 60, supply_temp_c=31.8)   # inside, but not by the hysteresis (0.5): still firing
    assert r.notifier.resolved() == []
    drive(r, 20, supply_temp_c=31.0)   # clear: first seen, then 19 s of `clear_after: 20s`
    assert r.notifier.resolved() == []
    drive(r, 1, supply_temp_c=31.0)
    assert r.notifier.resolved() == ["cdu-supply-band/cdu-1"]
    drive(r, 11, supply_temp_c=12.0)   # below the band
    assert [e.state for e in r.notifier.events] == [AlarmState.FIRING, AlarmState.RESOLVED, AlarmState.FIRING]
    assert r.notifier.events[-1].threshold == 18.0


# ---- a broken kind costs its own alarms, never the engine ------------------------------------------------


class FaultyRule(LimitRule):
    kind: Literal["faulty"]


class FaultyCondition(LimitCondition):
    def assess(self, now_ns: int) -> Assessment | None:
        if self.subject.number(self.rule.metric, now_ns) is not None:
            raise ZeroDivisionError("a bug in the kind")
        return None


@pytest.fixture
def faulty() -> Iterator[None]:
    RULE_KINDS.register(RuleKind("faulty", FaultyRule, FaultyCondition))
    yield
    RULE_KINDS.unregister("faulty")


async def test_a_kind_that_raises_holds_its_alarm_and_the_others_go_on(faulty: None, tmp_path: Path) -> None:
    errors = REGISTRY.counter("dcim_rule_kind_errors_total", "", ("rule",))
    before = errors.get(rule="buggy")
    r = Rig(hall(tmp_path, {"packs": NO_PACKS, "rules": [
        {"name": "buggy", "scope": {"devices": {"kind": "cdu"}}, "metric": "supply_temp_c", "kind": "faulty",
         "warning": 1},
        {"name": "leak", "scope": {"devices": {"kind": "cdu"}}, "metric": "leak", "kind": "state", "match": [True]},
    ]}))
    drive(r, 3)
    r.cdu("cdu-1", leak=True)
    assert r.notifier.fired() == ["leak/cdu-1"]
    assert r.service.store.record("buggy/cdu-1") is None
    assert errors.get(rule="buggy") - before >= 4
