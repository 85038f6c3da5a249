"""OPC UA configuration: docs/opcua.md and examples/chillers.yaml.snippet load; mistakes are clear errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.app.config import ConfigError, parse_config
from dcim.drivers.opcua.config import OpcUaDevice
from dcim.drivers.profiles import ProfileError, parse_profile

ROOT = Path(__file__).resolve().parents[2]


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S)


def test_the_documented_configuration_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPCUA_PASSWORD", "not-really")
    config = parse_config(yaml.safe_load(yaml_blocks(ROOT / "docs" / "opcua.md")[0]), source="docs/opcua.md")
    lead, standby = (d for d in config.devices if isinstance(d, OpcUaDevice))
    assert lead.security_mode == "SignAndEncrypt" and lead.deadband.type == "percent"
    assert lead.password is not None and lead.password.get_secret_value() == "not-really"
    assert lead.publishing_interval == 1.0 and lead.sampling_interval == 0.5
    assert standby.mode == "poll" and standby.security_policy == "None"


def test_the_documented_profile_fragment_is_valid() -> None:
    fragment = yaml.safe_load(yaml_blocks(ROOT / "docs" / "opcua.md")[1])
    profile = parse_profile({"name": "doc", "kind": "chiller", "protocol": "opcua", **fragment})
    assert [p.node for p in profile.points][1] == "/Chiller/Power"


def test_the_example_hall_has_a_lead_and_a_standby_chiller() -> None:
    config = parse_config(yaml.safe_load((ROOT / "examples" / "hall.yaml").read_text()), "hall.yaml")
    ports = [d.endpoint for d in config.devices if isinstance(d, OpcUaDevice)]
    assert ports == ["opc.tcp://127.0.0.1:14840", "opc.tcp://127.0.0.1:14841"]


def chiller(**fields: Any) -> dict[str, Any]:
    return {"site": {"id": "s"}, "devices": [{"id": "ch", "kind": "chiller", "protocol": "opcua",
                                              "profile": "generic-chiller", "endpoint": "opc.tcp://h:4840",
                                              **fields}]}


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"security_policy": "Basic256Sha256", "security_mode": "Sign"}, "devices[0]",
         "needs certificate, private_key, trust_list"),
        ({"security_policy": "Basic256Sha256"}, "devices[0]", "needs security_mode Sign or SignAndEncrypt"),
        ({"security_mode": "SignAndEncrypt"}, "devices[0]", "security_mode needs security_policy"),
        ({"username": "dcim"}, "devices[0]", "username and password go together"),
        ({"deadband": {"type": "percent", "value": 150}}, "devices[0].deadband", "at most 100"),
        ({"deadband": {"type": "relative", "value": 1}}, "devices[0].deadband.type", "'none', 'absolute'"),
        ({"endpoint": "http://h:4840"}, "devices[0].endpoint", "should match pattern"),
        ({"publishing_interval": "fast"}, "devices[0].publishing_interval", "not a duration"),
        ({"password": "hunter2", "username": "u"}, "devices[0].password", "never given inline"),
        ({"queue_size": 0}, "devices[0].queue_size", "greater than or equal to 1"),
        ({"reconnect_min": "1m", "reconnect_max": "1s"}, "devices[0]", "reconnect_min is above reconnect_max"),
    ],
)
def test_configuration_mistakes_name_the_field(fields: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(chiller(**fields))
    assert any(p == path and message in m for p, m in caught.value.errors), caught.value.errors


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ("ns=2;s=Chiller.LeavingTemp", "bare namespace index"),
        ("s=Chiller.LeavingTemp", "a node is nsu=<uri>;s=<id>"),
        ("nsu=urn:x;q=1", "expected nsu=<uri>;s=<id>"),
        ("/Chiller//Cop", "empty segment"),
    ],
)
def test_a_node_must_survive_a_server_restart(node: str, message: str) -> None:
    raw = {"name": "p", "kind": "chiller", "protocol": "opcua", "points": [{"name": "x", "node": node}]}
    with pytest.raises(ProfileError) as caught:
        parse_profile(raw)
    assert any(message in m for _, m in caught.value.errors), caught.value.errors
