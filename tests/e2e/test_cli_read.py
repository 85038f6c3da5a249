"""`dcim read` and `dcim write` against a simulator: commissioning from the command line."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from dcim.simulators.plant import Plant
from tests.e2e.harness import REPO, cdu_hall, expected_cdu_values, load, simulators

pytestmark = pytest.mark.e2e


async def dcim(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dcim.app.cli", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_read_prints_every_point_with_unit_and_quality(tmp_path: Path) -> None:
    path = cdu_hall(tmp_path, cdus=1)
    config = load(path)
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        code, out, err = await dcim("read", "-c", str(path), "cdu-1")
        assert code == 0, err
        assert "supply_temp_c" in out and "degC" in out and "good" in out
        code, out, err = await dcim("read", "-c", str(path), "cdu-1", "--json")
        assert code == 0, err
        points = {p["point"]: p for p in json.loads(out)}
        expected = expected_cdu_values(plant, "cdu-1")
        assert set(points) == set(expected)
        assert points["flow_lpm"]["value"] == pytest.approx(expected["flow_lpm"])
        assert points["flow_lpm"]["unit"] == "L/min"


async def test_write_in_range_reaches_the_device_and_out_of_range_is_refused(tmp_path: Path) -> None:
    # No daemon runs: `--direct`, with operator writes allowed while control is not armed.
    path = cdu_hall(tmp_path, cdus=1, rules={"control": {"operator_writes": True}})
    config = load(path)
    plant = Plant(config, frozen=True)
    async with simulators(config, plant):
        code, _out, err = await dcim("write", "-c", str(path), "cdu-1", "supply_temp_setpoint_c", "30.5", "--direct")
        assert code == 0, err
        assert plant.cdus["cdu-1"].supply_setpoint_c == pytest.approx(30.5)
        code, _out, err = await dcim("write", "-c", str(path), "cdu-1", "supply_temp_setpoint_c", "80", "--direct")
        assert code == 1 and "outside the allowed range" in err
        assert plant.cdus["cdu-1"].supply_setpoint_c == pytest.approx(30.5)
        code, _out, err = await dcim("write", "-c", str(path), "cdu-1", "flow_lpm", "10", "--direct")
        assert code == 1 and "read-only" in err


async def test_read_of_a_dead_device_fails_clearly(tmp_path: Path) -> None:
    path = cdu_hall(tmp_path, cdus=1)
    code, _out, err = await dcim("read", "-c", str(path), "cdu-1", "--timeout", "5")
    assert code == 1 and "cannot read" in err
    code, _out, err = await dcim("read", "-c", str(path), "cdu-9")
    assert code == 2 and "no device 'cdu-9'" in err
