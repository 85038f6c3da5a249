"""The documentation's samples are real: its YAML loads with dcim.app.config.parse_config, and the exposure
figures docs/deploy.md records are what systemd-analyze says of the shipped units today."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcim.app.config import ConfigError, parse_config
from tests.helpers import require_binary

ROOT = Path(__file__).resolve().parents[2]


def yaml_blocks(doc: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / doc).read_text(), flags=re.S)


def test_deploy_sample_loads_with_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What LoadCredential=dcim:/etc/dcim/credentials gives the service: dcim_<file> under the directory.
    for name in ("dcim_mqtt-password", "dcim_influx-password"):
        (tmp_path / name).write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (block,) = yaml_blocks("deploy.md")
    config = parse_config(yaml.safe_load(block), "docs/deploy.md")
    assert config.influxdb is not None and config.influxdb.password is not None
    assert config.influxdb.password.get_secret_value() == "s3cret"
    assert config.systemd.watchdog_interval == 5.0
    assert not Path(config.state_dir).is_absolute()  # lands in the unit's StateDirectory


def test_deploy_sample_needs_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (block,) = yaml_blocks("deploy.md")
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_load(block), "docs/deploy.md")
    # Both secrets reported, each at its path, neither value echoed.
    assert {path for path, _ in caught.value.errors} == {"mqtt.password", "influxdb.password"}
    assert all("CREDENTIALS_DIRECTORY" in message for _, message in caught.value.errors)


def test_grafana_sample_loads() -> None:
    (block,) = yaml_blocks("grafana.md")
    config = parse_config(yaml.safe_load(block), "docs/grafana.md")
    assert config.influxdb is not None and config.influxdb.api == "v1"


def test_recorded_exposure_is_current(tmp_path: Path) -> None:
    require_binary("systemd-analyze", "systemd")
    recorded = dict(re.findall(r"^\| (dcim[\w-]*\.service) \| (\d+\.\d) \| OK \|$",
                               (ROOT / "docs" / "deploy.md").read_text(), flags=re.M))
    assert set(recorded) == {"dcim.service", "dcim-ingest.service", "dcim-simulate.service"}
    for name, level in recorded.items():
        copy = tmp_path / name
        text = (ROOT / "systemd" / name).read_text()
        copy.write_text(text.replace("/opt/dcim/bin/dcim", str(Path(sys.executable).parent / "dcim")))
        out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(copy)],
                             capture_output=True, text=True, timeout=60).stdout
        assert f"Overall exposure level for {name}: {level} OK" in out, out[-400:]
