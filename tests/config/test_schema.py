"""`dcim schema` says what the loader accepts, and says it to people: every field has a description, every
example in it is valid, and every file under examples/ passes both `dcim check`'s loader and a standard JSON
Schema validator (the `jsonschema` package) run on the schema the command prints."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from dcim.app.config import ConfigError, json_schema, load_config, load_yaml, parse_config
from dcim.core.config import Duration, PositiveDuration
from dcim.core.secrets import Secret
from dcim.rules.kinds import ThresholdSpec, check_threshold

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
REFERENCE = re.compile(r"^(env|credential):([A-Za-z0-9_.-]+)$")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """The schema as a user gets it: the output of `dcim schema`."""
    out = subprocess.run([sys.executable, "-m", "dcim", "schema"], capture_output=True, text=True, timeout=120,
                         check=True, cwd=ROOT).stdout
    loaded: dict[str, Any] = json.loads(out)
    return loaded


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def nodes(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object in the document, with a readable path."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from nodes(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from nodes(value, f"{path}[{i}]")


def properties(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, node in nodes(schema):
        props = node.get("properties")
        # A model's `properties` maps names to schemas; skip a field that happens to be called "properties".
        if isinstance(props, dict) and node.get("type") == "object":
            for name, prop in props.items():
                yield f"{path}.{name}", prop


def with_secrets(raw: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every env: and credential: reference of a configuration resolvable, as on the server."""
    credentials = tmp_path / "credentials"
    credentials.mkdir(exist_ok=True)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    for _, node in nodes(raw):
        for value in node.values():
            for item in value if isinstance(value, list) else [value]:
                match = REFERENCE.match(item) if isinstance(item, str) else None
                if match and match[1] == "env":
                    monkeypatch.setenv(match[2], "https://example.invalid/not-a-secret")
                elif match:
                    (credentials / match[2]).write_text("not-a-secret\n")


def test_schema_is_a_valid_json_schema_and_the_library_s(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == json.loads(json.dumps(json_schema()))


def test_every_field_has_a_description(schema: dict[str, Any]) -> None:
    found = list(properties(schema))
    assert len(found) > 250  # the walk reaches every model: devices, rules, hooks, notifications
    missing = [path for path, prop in found if not str(prop.get("description", "")).strip()]
    # A new field needs a docstring under it (read by DocumentedSchema): see dcim.core.config.
    assert missing == []


def test_every_model_says_what_it_is(schema: dict[str, Any]) -> None:
    undescribed = [name for name, model in schema["$defs"].items()
                   if model.get("type") == "object" and not model.get("description")]
    assert undescribed == []


def test_every_example_in_the_schema_is_valid(schema: dict[str, Any]) -> None:
    checked = 0
    for path, node in nodes(schema):
        examples = node.get("examples")
        if not isinstance(examples, list) or path.endswith("/properties"):
            continue
        subschema = {k: v for k, v in node.items() if k != "examples"} | {"$defs": schema["$defs"]}
        for example in examples:
            errors = [e.message for e in validator(subschema).iter_errors(example)]
            assert errors == [], f"{path}: example {example!r}"
            checked += 1
    assert checked > 50


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_passes_check_and_the_schema(path: Path, schema: dict[str, Any], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    raw = load_yaml(path)
    with_secrets(raw, tmp_path, monkeypatch)
    config = load_config(path)  # what `dcim check` runs
    assert config.devices
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(schema).iter_errors(raw)]
    assert errors == []


def test_examples_cover_every_kind_and_protocol() -> None:
    seen = {(d["kind"], d["protocol"]) for path in EXAMPLES for d in load_yaml(path)["devices"]}
    assert {"pdu", "cdu", "chiller"} <= {kind for kind, _ in seen}
    assert {"snmp", "modbus", "opcua"} <= {protocol for _, protocol in seen}
    for name in ("pdu-snmp.yaml", "cdu-modbus.yaml", "chiller-opcua.yaml", "notifications.yaml"):
        assert (ROOT / "examples" / name).is_file()


def test_examples_hold_no_inline_secret() -> None:
    secret_keys = {"password", "token", "auth_key", "priv_key", "routing_key", "secret", "private_key_password"}
    for path in EXAMPLES:
        for _, node in nodes(load_yaml(path)):
            for key in secret_keys & set(node):
                assert re.match(r"^(env|file|credential):", str(node[key])), f"{path.name}: {key}"


BASE = {
    "site": {"id": "hall-1"},
    "devices": [{"id": "cdu-1", "kind": "cdu", "protocol": "modbus", "profile": "generic-cdu"}],
}


@pytest.mark.parametrize(("where", "change"), [
    ("(top)", {"sitee": {"id": "x"}}),
    ("(top)", {"workers": -1}),                                          # poll workers: a count or auto
    ("(top)", {"workers": "many"}),
    ("devices[0]", {"endpoint": "opc.tcp://10.0.0.1:4840"}),           # an OPC UA field on a Modbus device
    ("devices[0]", {"interval": "0s"}),                                  # a poll interval must be positive
    ("devices[0]", {"interval": "5 minutes"}),
    ("devices[0]", {"port": 70000}),
    ("mqtt", {"password": "hunter2"}),                                   # secrets are never inline
    ("rules", {"packs": {"air-racks": False}}),                          # a misspelt pack
    ("rules", {"notifications": {"group_wait": "-1s"}}),
    ("rules", {"rules": [{"name": "x", "kind": "state", "scope": {"devices": {"kind": "cdu"}},
                          "metric": "leak", "match": [True], "warning": 3}]}),  # a threshold on a state rule
])
def test_schema_refuses_what_the_loader_refuses(schema: dict[str, Any], where: str, change: dict[str, Any]) -> None:
    raw = json.loads(json.dumps(BASE))
    if where == "(top)":
        raw |= change
    elif where == "devices[0]":
        raw["devices"][0] |= change
    else:
        raw[where] = change
    with pytest.raises(ConfigError):
        parse_config(raw)
    assert not validator(schema).is_valid(raw)
    parse_config(BASE)
    assert validator(schema).is_valid(BASE)


# What the duration parser accepts, and what it refuses. Left out on purpose: forms the parser takes only
# because Python's float() does ("1_000s", "inf", a boolean); the schema does not invite them.
DURATIONS = ["1s", "500ms", " 2.5 S ", "5M", "1h", "1.5h", "0", "0s", "0.0ms", "1e3ms", ".5s", "3.", "+3s",
             "5 m", "10", 0, 2.5, -1, "-1s", "abc", "1x", "s", "", "5 minutes", "1s5", "ms"]


@pytest.mark.parametrize("value", DURATIONS, ids=[repr(v) for v in DURATIONS])
@pytest.mark.parametrize("kind", [Duration, PositiveDuration], ids=["Duration", "PositiveDuration"])
def test_duration_schema_matches_the_parser(kind: Any, value: Any) -> None:
    adapter: TypeAdapter[float] = TypeAdapter(kind)
    try:
        adapter.validate_python(value)
        loads = True
    except ValidationError:
        loads = False
    assert jsonschema.Draft202012Validator(adapter.json_schema()).is_valid(value) is loads


THRESHOLDS = [80, -5, 2.5, "80", " 2.5 ", "1e3", "80% of power_budget_kw", " 90 % of feed_capacity_kw ",
              "-10% of x", "setpoint_c + 2", "setpoint_c-0.5", "flow_required_lpm", "80 %", "% of x", "80% of",
              "Setpoint + 2", "setpoint_c + x", "80% of power_budget_kw + 2", "", "abc def", True]


@pytest.mark.parametrize("value", THRESHOLDS, ids=[repr(v) for v in THRESHOLDS])
def test_threshold_schema_matches_the_parser(value: Any) -> None:
    try:
        check_threshold(value)
        loads = True
    except ValueError:
        loads = False
    schema = TypeAdapter(ThresholdSpec).json_schema()
    assert jsonschema.Draft202012Validator(schema).is_valid(value) is loads


@pytest.mark.parametrize(("value", "form_ok"), [
    ("env:DCIM_TEST_SECRET", True), ("file:/etc/dcim/x", True), ("credential:dcim_x", True),
    ("hunter2", False), ("env:", False), ("ftp:x", False), ("", False), ("ENV:X", False),
])
def test_secret_schema_admits_references_only(value: str, form_ok: bool) -> None:
    schema = TypeAdapter(Secret).json_schema()
    assert jsonschema.Draft202012Validator(schema).is_valid(value) is form_ok
    if not form_ok:
        with pytest.raises(ValidationError, match="never given inline"):
            TypeAdapter(Secret).validate_python(value)


def documented_samples() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every configuration sample of the README and docs/ (a part of one gets a site around it), except
    contributing.md's, which configure plugins a plain install does not have."""
    keys = set(json_schema()["properties"])
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if doc.name == "contributing.md":
            continue
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), flags=re.S)):
            raw = yaml.safe_load(block)
            if isinstance(raw, dict) and set(raw) <= keys:
                yield f"{doc.name}[{i}]", {"site": {"id": "hall-1"}} | raw


def test_documented_samples_pass_the_schema(schema: dict[str, Any]) -> None:
    samples = dict(documented_samples())
    assert {"README.md[0]", "deploy.md[0]", "rules.md[0]", "notifications.md[0]"} <= set(samples)
    failures = {name: [e.message for e in validator(schema).iter_errors(raw)] for name, raw in samples.items()}
    assert {name: errors for name, errors in failures.items() if errors} == {}
