"""Rule configuration: the documented sample loads, packs are valid and listed, errors carry paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.app.config import ConfigError, parse_config
from dcim.rules.config import PACKS, effective_rules, load_pack
from tests.rules.rig import hall

DOC = Path(__file__).parents[2] / "docs" / "rules.md"


def doc_sample() -> dict[str, Any]:
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None
    raw: dict[str, Any] = yaml.safe_load(block.group(1))
    return raw


def test_documented_sample_loads() -> None:
    config = parse_config(doc_sample(), "docs/rules.md")
    names = {r.name for r in effective_rules(config.rules)}
    assert "rack-power-near-breaker" in names and "liquid-rack-heat-capture" not in names
    budget = next(r for r in effective_rules(config.rules) if r.name == "liquid-rack-power-budget")
    assert budget.overrides["A01"].warning == 85
    assert config.rules.control.actions[0].writes[0].point == "outlet_command:{outlet}"


@pytest.mark.parametrize("doc", [DOC, DOC.parents[1] / "README.md"], ids=["docs/rules.md", "README.md"])
def test_every_pack_rule_is_in_the_readme_table(doc: Path) -> None:
    text = doc.read_text()
    for pack in PACKS:
        for rule in load_pack(pack).rules:
            assert re.search(rf"\| {pack} \| {re.escape(rule.name)} \|", text), f"{rule.name} missing from {doc}"


def errors_of(rules: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(hall(tmp_path, rules))
    return dict(caught.value.errors)


def test_schema_errors_have_paths(tmp_path: Path) -> None:
    errors = errors_of({"packs": {"air-rack": True, "water": True}, "rules": [
        {"name": "a", "scope": {"racks": {}}, "metric": "power_kw", "warning": "abc def"},
        {"name": "b", "scope": {"racks": {}, "devices": {}}, "metric": "power_kw", "warning": 1},
        {"name": "c", "scope": {"racks": {}}, "metric": "flow_lpm", "warning": 1},
        {"name": "d", "scope": {"devices": {"kind": "cdu"}}, "metric": "leak", "kind": "state"},
        {"name": "e", "scope": {"devices": {}}, "metric": "x", "for": "soon", "warning": 1},
        {"name": "f", "scope": {"devices": {}}, "metric": "x", "critical": 1, "colour": "red"},
    ]}, tmp_path)
    assert "unknown pack(s) water" in errors["rules.packs"]
    assert "threshold 'abc def'" in errors["rules.rules[0].warning"]
    assert "either racks or devices" in errors["rules.rules[1].scope"]
    assert "not a rack metric" in errors["rules.rules[2]"]
    assert "needs `match`" in errors["rules.rules[3]"]
    assert "not a duration" in errors["rules.rules[4].for"]
    assert errors["rules.rules[5].colour"] == "unknown key (typo?)"


def test_reference_errors_have_paths(tmp_path: Path) -> None:
    errors = errors_of({
        "disable": ["no-such-rule"],
        "overrides": {"cdu-leak": {"Z09": {"enabled": False}}},
        "rules": [{"name": "a", "scope": {"racks": {"rows": ["Q"], "ids": ["A01", "nope"]}},
                   "metric": "power_kw", "warning": 1, "overrides": {"ghost": {"warning": 2}}}],
        "control": {"actions": [{"name": "x", "rule": "missing", "target": "cdu",
                                 "writes": [{"point": "flow_setpoint_lpm", "value": 1}]}]},
    }, tmp_path)
    assert errors == {
        "rules.disable[0]": "no rule named 'no-such-rule'",
        "rules.overrides.cdu-leak.Z09": "unknown rack or device 'Z09'",
        "rules.rules[0].scope.racks.rows[0]": "unknown row 'Q'",
        "rules.rules[0].scope.racks.ids[1]": "unknown id 'nope'",
        "rules.rules[0].overrides.ghost": "unknown rack or device 'ghost'",
        "rules.control.actions[0].rule": "no rule named 'missing'",
    }


def test_own_rule_replaces_a_builtin_and_disable_removes(tmp_path: Path) -> None:
    config = parse_config(hall(tmp_path, {
        "disable": ["chiller-cop"],
        "rules": [{"name": "cdu-leak", "scope": {"devices": {"kind": "cdu"}}, "metric": "leak",
                   "kind": "state", "match": [True], "severity": "warning"}],
    }))
    rules = {r.name: r for r in effective_rules(config.rules)}
    assert "chiller-cop" not in rules
    assert str(rules["cdu-leak"].severity) == "warning"
    assert len(rules) == sum(len(load_pack(p).rules) for p in PACKS) - 1
