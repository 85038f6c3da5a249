"""The read plan: a profile's points coalesced into as few requests as possible.

Per table, points sorted by address are merged into one read while the unused registers between them are
at most `max_gap` and the read stays within `max_registers` (the protocol allows 125 registers, 2000 bits).
Points that share a register (bit flags of one status word) fall in the same read. A value is never split
across two reads: a 4-register value that would cross the limit starts the next read instead.

    input  0..18 (19 registers, 21 points)  -> 1 request
    holding 100..101                         -> 1 request
    discrete 0                               -> 1 request

For coils and discrete inputs one register's worth of gap is 16 bits, so `max_gap` bridges 16x as many
bits, and a read holds up to 2000 bits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dcim.drivers.modbus.points import Point

MAX_BITS = 2000
TABLE_ORDER = ("holding", "input", "coil", "discrete")


@dataclass(frozen=True, slots=True)
class Read:
    table: str
    address: int
    count: int
    points: tuple[Point, ...]

    @property
    def end(self) -> int:
        return self.address + self.count

    def slice(self, data: list[int] | list[bool], point: Point) -> list[int] | list[bool]:
        """The part of this read's data that belongs to `point`."""
        start = point.address - self.address
        return data[start : start + point.count]


def plan_reads(points: Iterable[Point], *, max_gap: int, max_registers: int = 125) -> list[Read]:
    """Coalesce points into reads, ordered by table then address."""
    by_table: dict[str, list[Point]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)
    reads: list[Read] = []
    for table in TABLE_ORDER:
        members = sorted(by_table.get(table, []), key=lambda p: (p.address, p.count))
        if not members:
            continue
        bits = table in ("coil", "discrete")
        limit = MAX_BITS if bits else max_registers
        gap = max_gap * 16 if bits else max_gap
        reads += _coalesce(table, members, limit=limit, gap=gap)
    return reads


def _coalesce(table: str, points: list[Point], *, limit: int, gap: int) -> list[Read]:
    reads: list[Read] = []
    group: list[Point] = []
    start = end = 0
    for point in points:
        p_end = point.address + point.count
        if group and point.address - end <= gap and max(end, p_end) - start <= limit:
            group.append(point)
            end = max(end, p_end)
            continue
        if group:
            reads.append(Read(table, start, end - start, tuple(group)))
        # A lone point larger than the limit (a float32 with max_registers 1) is still read whole.
        group, start, end = [point], point.address, p_end
    if group:
        reads.append(Read(table, start, end - start, tuple(group)))
    return reads
