"""The dashboards and provisioning files as files: valid Grafana JSON, stable unique uids, the provisioned
datasource everywhere, a unit on every panel, colours from the rule packs, and no name the daemon does not
write. (No Grafana server can be installed here; tests/grafana/test_queries.py runs every query.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as grafana_dashboard
from grafana_foundation_sdk.models import units as grafana_units

from dcim.app.config import parse_config
from tests.grafana.dashboards import DATASOURCE_UID, ROOT, load_all, panels, queries
from tests.grafana.hall import hall_config
from tests.grafana.schema import rack_tags_of, unknown_names, written_schema

DASHBOARDS = load_all()
PROVISIONING = ROOT / "grafana" / "provisioning"
# Every unit id Grafana knows, from its generated models (packages/grafana-data valueFormats).
UNITS = {v for k, v in vars(grafana_units).items() if isinstance(v, str) and not k.startswith("_")}
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "state-timeline"}
EXPECTED = {"hall.json": "dcim-hall", "rack.json": "dcim-rack", "cooling.json": "dcim-cooling",
            "chillers.json": "dcim-chillers", "alarms.json": "dcim-alarms"}


def test_generator_is_in_sync() -> None:
    """The JSON is what grafana/build.py makes from the current rule packs (colours included)."""
    result = subprocess.run([sys.executable, str(ROOT / "grafana" / "build.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_dashboard_with_a_stable_unique_uid() -> None:
    assert {name: d["uid"] for name, d in DASHBOARDS.items()} == EXPECTED
    assert len({d["title"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_has_what_grafana_requires(name: str) -> None:
    d = DASHBOARDS[name]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"])
    assert isinstance(d["title"], str) and d["title"]
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36  # Grafana 10+
    assert isinstance(d["version"], int)
    assert d["time"]["from"].startswith("now-") and d["time"]["to"] == "now"
    assert "dcim" in d["tags"]
    assert isinstance(d["templating"]["list"], list) and isinstance(d["annotations"]["list"], list)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in d["panels"]:
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("x", "y", "w", "h"))
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
    names = [v["name"] for v in d["templating"]["list"]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_panel_uses_the_provisioned_datasource_and_sets_a_unit(name: str) -> None:
    d = DASHBOARDS[name]
    found = list(panels(d))
    assert found
    for panel in found:
        where = f"{name}: {panel['title']!r}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel["datasource"] == {"type": "influxdb", "uid": DATASOURCE_UID}, where
        assert panel["targets"], where
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == DATASOURCE_UID and t["rawQuery"] is True, where
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit in UNITS, f"{where}: unit {unit!r}"
        for override in panel["fieldConfig"]["overrides"]:
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"] in UNITS, where
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[0]["value"] is None, f"{where}: the base step must be open-ended"
        values = [s["value"] for s in steps[1:]]
        assert values == sorted(values), f"{where}: threshold steps out of order"
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"]["uid"] == DATASOURCE_UID
    for anno in d["annotations"]["list"]:
        if not anno.get("builtIn"):
            assert anno["datasource"]["uid"] == DATASOURCE_UID


def _lost(original: Any, decoded: Any, path: str = "") -> list[str]:
    """Keys of `original` that a decode/encode round trip dropped (unknown to the model)."""
    if isinstance(original, dict) and isinstance(decoded, dict):
        out = []
        for key, value in original.items():
            out += [f"{path}.{key}"] if key not in decoded else _lost(value, decoded[key], f"{path}.{key}")
        return out
    if isinstance(original, list) and isinstance(decoded, list):
        return [lost for i, (a, b) in enumerate(zip(original, decoded, strict=False))
                for lost in _lost(a, b, f"{path}[{i}]")]
    return []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_are_what_grafanas_own_models_know(name: str) -> None:
    """Decoded with Grafana's generated dashboard models (grafana-foundation-sdk) and encoded again, no panel
    loses a key: no misspelt or unknown panel, fieldConfig or gridPos field. (Variables and annotations keep
    a few keys the models do not carry: `definition`, `builtIn`, the datasource-specific annotation target.)"""
    data = DASHBOARDS[name]
    model = grafana_dashboard.Dashboard.from_json(data)
    assert model.uid == data["uid"] and model.schema_version == data["schemaVersion"]
    decoded = json.loads(json.dumps(model, cls=JSONEncoder))
    assert _lost(data["panels"], decoded["panels"], ".panels") == []
    lost = _lost({k: v for k, v in data.items() if k not in ("templating", "annotations")}, decoded)
    assert lost == []


def test_annotations_show_the_alarm_message() -> None:
    for name, d in DASHBOARDS.items():
        (anno,) = [a for a in d["annotations"]["list"] if not a.get("builtIn")]
        target = anno["target"]
        assert target["fromAnnotations"] is True and target["rawQuery"] is True, name
        selected = set(re.findall(r'"([a-z_]+)"', target["query"].split(" FROM ")[0]))
        assert target["textColumn"] in selected, name
        assert set(target["tagsColumn"].split(",")) <= selected, name


def test_no_query_names_what_the_daemon_does_not_write() -> None:
    schema = written_schema()
    problems = []
    for name, d in DASHBOARDS.items():
        for q in queries(name, d):
            problems += [f"{q.dashboard} {q.where}: {p}" for p in unknown_names(q.text, schema)]
    assert problems == []


def test_the_name_check_catches_mistakes() -> None:
    schema = written_schema()
    assert unknown_names('SELECT mean("supply_temp_c") FROM "cdu" WHERE $timeFilter', schema) == []
    assert unknown_names('SELECT mean("supply_temp") FROM "cdu"', schema)  # no such field
    assert unknown_names('SELECT mean("power_kw") FROM "cdu"', schema)  # a rack field, not a CDU one
    assert unknown_names('SELECT mean("flow_lpm") FROM "coolant"', schema)  # no such measurement
    assert unknown_names('SELECT mean(flow_lpm) FROM "cdu"', schema)  # unquoted: not checkable
    assert unknown_names('SELECT last("x") FROM "cdu" WHERE "aisle" = \'1\'', schema)


def test_queries_follow_the_conventions() -> None:
    for name, d in DASHBOARDS.items():
        for q in queries(name, d):
            if q.kind == "variable":
                assert q.text.startswith("SHOW TAG VALUES"), q
                continue
            # Two kinds of state are read by their latest change whenever it was: alarms within a week,
            # device availability ever (a `device_status` line is written on a change only).
            if "time > now() - 7d" not in q.text and 'FROM "device_status"' not in q.text:
                assert "$timeFilter" in q.text, q
            if "GROUP BY time(" in q.text:
                assert "GROUP BY time($__interval)" in q.text, q


def test_rack_lines_carry_their_cdu() -> None:
    """Rack dashboards join a rack with its CDU loop through the `cdu` tag of rack lines."""
    tags = rack_tags_of(parse_config(hall_config()))
    assert {"site", "room", "row", "rack", "cdu"} <= tags
    assert tags <= written_schema()["rack"].tags


def _pack_rules() -> dict[str, dict[str, Any]]:
    rules: dict[str, dict[str, Any]] = {}
    for path in sorted((ROOT / "dcim" / "rules" / "packs").glob("*.yaml")):
        for rule in yaml.safe_load(path.read_text())["rules"]:
            if all(isinstance(rule.get(k), int | float) for k in ("warning", "critical") if k in rule):
                rules.setdefault(rule["metric"], rule)
    return rules


def test_threshold_colours_match_the_rule_packs() -> None:
    """A panel showing one pack metric turns yellow at the rule's warning and red at its critical level."""
    rules = _pack_rules()
    checked = 0
    for name, d in DASHBOARDS.items():
        for panel in panels(d):
            if len(panel["targets"]) != 1 or "count(" in panel["targets"][0]["query"]:
                continue
            used = set(re.findall(r'\b(?:last|mean)\("([a-z0-9_]+)"\)', panel["targets"][0]["query"]))
            if len(used) != 1 or (metric := used.pop()) not in rules:
                continue
            rule = rules[metric]
            steps = {s["color"]: s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]}
            below = rule.get("when") == "below"
            if "warning" in rule:
                key = "green" if below else "#EAB839"
                assert steps.get(key) == rule["warning"], (name, panel["title"], steps, rule)
            if "critical" in rule:
                key = ("#EAB839" if "warning" in rule else "green") if below else "red"
                assert steps.get(key) == rule["critical"], (name, panel["title"], steps, rule)
            checked += 1
    assert checked >= 8


def test_datasource_provisioning() -> None:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "dcim.yaml").read_text())
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["uid"] == DATASOURCE_UID and ds["type"] == "influxdb" and ds["access"] == "proxy"
    assert ds["jsonData"]["version"] == "InfluxQL"
    # Everything site-specific comes from Grafana's environment: ${VAR} expansion in provisioning files.
    assert ds["url"] == "${DCIM_INFLUXDB_URL}"
    assert ds["user"] == "${DCIM_INFLUXDB_USER}"
    assert ds["jsonData"]["dbName"] == "${DCIM_INFLUXDB_DATABASE}"
    assert ds["secureJsonData"]["password"] == "${DCIM_INFLUXDB_PASSWORD}"


def test_dashboard_provisioning() -> None:
    doc = yaml.safe_load((PROVISIONING / "dashboards" / "dcim.yaml").read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and Path(provider["options"]["path"]).is_absolute()
    assert provider["allowUiUpdates"] is False  # the JSON files stay the source of truth


def test_state_stats_name_their_fields() -> None:
    """Grafana's stat shows numeric fields only by default: a stat of states (leak, status, reservoir...)
    must name its string and boolean fields, or it shows "No data" over perfectly good data."""
    checked = 0
    for name, d in DASHBOARDS.items():
        for panel in panels(d):
            if panel["type"] != "stat" or not panel["fieldConfig"]["defaults"]["mappings"]:
                continue
            fields = panel["options"]["reduceOptions"].get("fields", "")
            assert fields.startswith("/^(") and fields.endswith(")$/"), (name, panel["title"])
            pattern = re.compile(fields[1:-1])
            aliases = re.findall(r'AS "([^"]+)"', panel["targets"][0]["query"])
            assert aliases and all(pattern.fullmatch(a) for a in aliases), (name, panel["title"], fields)
            checked += 1
    assert checked == 6
