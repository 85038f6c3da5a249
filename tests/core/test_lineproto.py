"""Line protocol: data-driven cases, batch in, expected lines out."""

from __future__ import annotations

import pytest

from dcim.core.lineproto import encode_batch
from dcim.core.samples import Batch, Quality, Sample

TS = 1_700_000_000_000_000_000
TAGS = (("device", "cdu-1"), ("site", "hall 1"))

CASES = [
    (
        [Sample("cdu-1", "supply_temp_c", 32.1, TS), Sample("cdu-1", "leak", False, TS),
         Sample("cdu-1", "flow_setpoint_lpm", 450, TS), Sample("cdu-1", "reservoir_level", 'o"k', TS)],
        [f'cdu,device=cdu-1,site=hall\\ 1 supply_temp_c=32.1,leak=false,flow_setpoint_lpm=450.0,'
         f'reservoir_level="o\\"k" {TS}'],
    ),
    (
        [Sample("cdu-1", "supply_temp_c", 32.1, TS),
         Sample("cdu-1", "flow_lpm", None, TS, Quality.BAD, "illegal data address")],
        [f'cdu,device=cdu-1,site=hall\\ 1 supply_temp_c=32.1,quality="bad",'
         f'quality_reason="illegal data address" {TS}'],
    ),
    (
        [Sample("cdu-1", "flow_lpm", None, TS, Quality.BAD, "timeout")],
        [f'cdu,device=cdu-1,site=hall\\ 1 quality="bad",quality_reason="timeout" {TS}'],
    ),
    (
        [Sample("p", "power_w", 12.0, TS, measurement="pdu_outlet", tags=(("outlet", "3"),)),
         Sample("p", "power_w", 14.0, TS, measurement="pdu_outlet", tags=(("outlet", "4"),)),
         Sample("p", "power_w", float("nan"), TS)],
        [f"pdu_outlet,device=cdu-1,outlet=3,site=hall\\ 1 power_w=12.0 {TS}",
         f"pdu_outlet,device=cdu-1,outlet=4,site=hall\\ 1 power_w=14.0 {TS}",
         f'cdu,device=cdu-1,site=hall\\ 1 quality="bad",quality_reason="no value" {TS}'],
    ),
]


@pytest.mark.parametrize(("samples", "expected"), CASES)
def test_encode(samples: list[Sample], expected: list[str]) -> None:
    assert encode_batch(Batch("cdu-1", "cdu", TS, samples), TAGS) == expected
