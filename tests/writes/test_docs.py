"""The configuration sample of docs/writes.md loads through the daemon's parser and means what it says."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dcim.app.config import parse_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "writes.md"


def test_documented_control_section_loads() -> None:
    [block] = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    config = parse_config({"site": {"id": "hall-1"}, **yaml.safe_load(block)}, "docs/writes.md")
    control = config.rules.control
    assert (control.armed, control.operator_writes, control.min_interval, control.verify_timeout) == (
        False, True, 10.0, 10.0)
