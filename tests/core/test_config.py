"""Configuration: typical mistakes all reported at once, each with its path; secrets never echoed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcim.app.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]

BROKEN = """
site: {id: hall-1}
rooms:
  - id: dh1
    rows:
      - id: A
        racks:
          - {id: A01, cooling: liquid, power_budget_kw: 150, cdu: cdu-9}
          - {id: A02, cooling: liquid, power_budget_kw: -5, cdu: cdu-1}
          - {id: A01, cooling: water, power_budget_kw: 50}
devices:
  - {id: cdu-1, kind: cdu, protocol: modbus, host: 127.0.0.1, port: 5020, profile: generic-cdu}
  - {id: cdu-2, kind: cdu, protocol: modbus, port: 70000, profile: generic-cdu, intervall: 1s}
  - {id: cdu-1, kind: cdu, protocol: modbus, profile: no-such-profile}
  - {id: pdu-1, kind: pdu, protocol: smnp, profile: generic-cdu}
  - {id: cdu-3, kind: cdu, protocol: modbus, profile: generic-cdu, interval: soon}
mqtt: {host: broker, password: hunter2}
influxdb: {url: ftp://db, api: v3}
"""


def test_every_mistake_reported_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_load(BROKEN), "hall.yaml")
    paths = {path for path, _ in caught.value.errors}
    expected = {
        "rooms[0].rows[0].racks[1].power_budget_kw",
        "rooms[0].rows[0].racks[2].cooling",
        "rooms[0].rows[0].racks[2].id",          # duplicate rack id
        "rooms[0].rows[0].racks[0].cdu",          # not a CDU device
        "devices[1].port",
        "devices[1].intervall",                   # typo: unknown key
        "devices[2].id",                          # duplicate device id
        "devices[2].profile",                     # unknown profile
        "devices[3]",                             # unknown protocol
        "devices[4].interval",
        "mqtt.password",                          # inline secret
        "influxdb.url",
        "influxdb.api",
    }
    assert expected <= paths, expected - paths
    rendered = caught.value.render()
    assert "hunter2" not in rendered
    assert "unknown key" in rendered


def test_secret_from_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCIM_TEST_TOKEN", "s3cret-token")
    (tmp_path / "pw").write_text("file-pass\n")
    config = parse_config({
        "site": {"id": "x"},
        "mqtt": {"host": "b", "username": "u", "password": f"file:{tmp_path / 'pw'}"},
        "influxdb": {"token": "env:DCIM_TEST_TOKEN"},
    })
    assert config.influxdb is not None and config.influxdb.token is not None
    assert config.influxdb.token.get_secret_value() == "s3cret-token"
    assert config.mqtt.password is not None and config.mqtt.password.get_secret_value() == "file-pass"
    assert "s3cret" not in repr(config) and "file-pass" not in repr(config)


def test_missing_secret_names_the_variable_not_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DCIM_NOPE", raising=False)
    with pytest.raises(ConfigError) as caught:
        parse_config({"site": {"id": "x"}, "influxdb": {"token": "env:DCIM_NOPE"}})
    assert caught.value.errors == [("influxdb.token", "environment variable DCIM_NOPE is not set")]


def test_profile_of_wrong_protocol_or_kind() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"site": {"id": "x"}, "devices": [
            {"id": "p", "kind": "pdu", "protocol": "modbus", "profile": "generic-cdu"}]})
    assert any(path == "devices[0].profile" and "is for a cdu" in msg for path, msg in caught.value.errors)


def test_example_configuration_is_valid() -> None:
    config = load_config(REPO / "examples" / "hall.yaml")
    assert config.devices and all(d.simulate for d in config.devices)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dcim.app.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_dcim_check_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    result = run_cli("check", "-c", str(bad))
    assert result.returncode == 1
    assert "devices[1].port:" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    good = run_cli("check", "-c", "examples/hall.yaml")
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout


def test_dcim_check_reports_yaml_syntax_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("site: {id: x\n")
    result = run_cli("check", "-c", str(broken))
    assert result.returncode == 1 and "(yaml)" in result.stderr
    result = run_cli("check", "-c", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1 and "(file)" in result.stderr


def test_dcim_schema_is_json_schema() -> None:
    result = run_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert "devices" in schema["properties"] and "site" in schema["required"]
