"""docs/snmp.md's samples and examples/pdus.yaml.snippet load as they are shown."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.app.config import parse_config
from dcim.drivers.profiles import parse_profile
from dcim.drivers.snmp.config import SnmpDevice

REPO = Path(__file__).resolve().parents[2]


def yaml_blocks() -> list[Any]:
    text = (REPO / "docs" / "snmp.md").read_text()
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]


def test_configuration_sample_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDU_AUTH_KEY", "auth-key-of-the-doc")
    monkeypatch.setenv("PDU_PRIV_KEY", "priv-key-of-the-doc")
    config = parse_config(yaml_blocks()[0], "docs/snmp.md")
    apc, raritan = config.devices
    assert isinstance(apc, SnmpDevice) and isinstance(raritan, SnmpDevice)
    assert apc.write_community == "private" and apc.deadline == 1.0 and apc.max_repetitions == 25
    assert apc.client == "builtin"
    assert raritan.version == "3" and raritan.auth_protocol == "sha256" and raritan.priv_protocol == "aes128"
    assert raritan.priv_key is not None and raritan.priv_key.get_secret_value() == "priv-key-of-the-doc"


def test_profile_sample_loads() -> None:
    profile = parse_profile(yaml_blocks()[1], "docs/snmp.md")
    assert [p.name for p in profile.points] == ["power_w", "current_a", "power_w", "state", "outlet_command",
                                                 "temp_c"]
    assert profile.points[0].missing == [-1]


def test_every_rack_of_the_example_hall_has_an_a_and_a_b_pdu() -> None:
    config = parse_config(yaml.safe_load((REPO / "examples" / "hall.yaml").read_text()), "hall.yaml")
    racks = [rack for _, _, rack in config.racks()]
    assert all(rack.feeds.a is not None and rack.feeds.b is not None for rack in racks)
    assert {rack.id for rack in racks if rack.cooling == "air"} == {"C01", "C02"}
    assert all(40 <= rack.power_budget_kw <= 60 for rack in racks if rack.cooling == "air")
    pdus = [d for d in config.devices if d.kind == "pdu"]
    assert len(pdus) == 2 * len(racks)
    assert {d.profile for d in pdus} == {"apc-rpdu2", "raritan-px"}
    ports = [d.port for d in pdus if isinstance(d, SnmpDevice)]
    assert len(set(ports)) == len(ports) and min(ports) >= 16100
