"""The read plan: how many requests a profile costs after coalescing, and the edge cases of merging."""

from __future__ import annotations

from typing import Any

import pytest

from dcim.drivers.modbus.plan import plan_reads
from dcim.drivers.modbus.points import Point
from dcim.drivers.profiles import load_profile


def p(name: str, address: int, type_: str = "uint16", table: str = "holding", **extra: Any) -> Point:
    return Point.model_validate({"name": name, "table": table, "address": address, "type": type_, **extra})


def spans(reads: list[Any]) -> list[tuple[str, int, int]]:
    return [(r.table, r.address, r.count) for r in reads]


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        # input 0..18 (21 points), holding setpoints 100..101, the discrete leak input.
        ("generic-cdu", [("holding", 100, 2), ("input", 0, 19), ("discrete", 0, 1)]),
        # telemetry 36864..36877, the two flag words, targets 37888..37889 with the control word 37904
        # (a 14-register gap, under the default 16).
        ("ocp-orv3-rpu", [("holding", 36864, 14), ("holding", 37377, 2), ("holding", 37888, 17)]),
    ],
)
def test_requests_a_profile_costs(profile: str, expected: list[tuple[str, int, int]]) -> None:
    points = load_profile(profile).points
    reads = plan_reads(points, max_gap=16, max_registers=125)
    assert spans(reads) == expected
    # Every point is read exactly once.
    assert sorted(pt.name for r in reads for pt in r.points) == sorted(pt.name for pt in points)


def test_no_gap_bridging_reads_each_cluster() -> None:
    reads = plan_reads(load_profile("ocp-orv3-rpu").points, max_gap=0)
    # 36864..36869 and 36873..36877 split at the 3-register hole; 37888..37889 and 37904 split too.
    assert spans(reads) == [
        ("holding", 36864, 6), ("holding", 36873, 5), ("holding", 37377, 2),
        ("holding", 37888, 2), ("holding", 37904, 1),
    ]


@pytest.mark.parametrize(("second", "merged"), [(14, True), (15, False)])
def test_gap_just_under_and_over(second: int, merged: bool) -> None:
    # a occupies 0..3 (end 4); b at 14 leaves a gap of 10 registers, at 15 a gap of 11.
    reads = plan_reads([p("a", 0, "float64"), p("b", second)], max_gap=10)
    assert len(reads) == (1 if merged else 2)
    if merged:
        assert spans(reads) == [("holding", 0, second + 1)]


def test_never_more_than_max_registers() -> None:
    points = [p(f"r{i}", i) for i in range(300)]
    reads = plan_reads(points, max_gap=16, max_registers=125)
    assert spans(reads) == [("holding", 0, 125), ("holding", 125, 125), ("holding", 250, 50)]
    smaller = plan_reads(points, max_gap=16, max_registers=100)
    assert [r.count for r in smaller] == [100, 100, 100]


def test_a_value_straddling_the_limit_starts_the_next_read() -> None:
    # 0..122 single registers, then a 4-register float64 at 123..126: it would cross 125, so it moves.
    points = [p(f"r{i}", i) for i in range(123)] + [p("wide", 123, "float64")]
    reads = plan_reads(points, max_gap=16, max_registers=125)
    assert spans(reads) == [("holding", 0, 123), ("holding", 123, 4)]
    assert reads[1].points[0].name == "wide"


def test_flags_sharing_a_register_are_read_once() -> None:
    flags = [p(f"flag{b}", 7, bit=b) for b in range(16)]
    reads = plan_reads(flags, max_gap=0)
    assert spans(reads) == [("holding", 7, 1)]
    assert len(reads[0].points) == 16
    assert all(reads[0].slice([0xABCD], pt) == [0xABCD] for pt in flags)


def test_tables_are_never_mixed() -> None:
    points = [p("h", 0), p("i", 1, table="input"), p("c", 2, "bool", table="coil"),
              p("d", 3, "bool", table="discrete")]
    assert [r.table for r in plan_reads(points, max_gap=16)] == ["holding", "input", "coil", "discrete"]


def test_bits_up_to_2000_per_read() -> None:
    coils = [p(f"c{i}", i * 10, "bool", table="coil") for i in range(300)]  # 0..2990, 10 apart
    reads = plan_reads(coils, max_gap=1)  # 16 bits of gap bridged
    assert [r.count for r in reads] == [1991, 991]  # 0..1990 and 2000..2990
    assert all(r.count <= 2000 for r in reads)


def test_a_lone_point_wider_than_the_limit_is_still_read_whole() -> None:
    reads = plan_reads([p("f", 10, "float32"), p("g", 12, "float32")], max_gap=16, max_registers=1)
    assert spans(reads) == [("holding", 10, 2), ("holding", 12, 2)]
