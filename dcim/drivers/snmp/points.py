"""An SNMP point in a profile: where a value lives in the agent's tree and how to make it canonical.

A point is a scalar (one instance OID) or a table column (one value per row). A column's OID carries
the wildcard `*` where the row index goes; the index becomes the tag named by `index_tag`:

    # APC: sub-identifiers after the column are the outlet number
    {name: current_a, oid: 1.3.6.1.4.1.318.1.1.26.9.4.3.1.6.*, index_tag: outlet, scale: 0.1}
    # Raritan: rows are {pdu}.{outlet}.{sensorType}; only sensor type 1 (rmsCurrent) is this point
    {name: current_a, oid: 1.3.6.1.4.1.13742.6.5.4.3.1.4.1.*.1, index_tag: outlet,
     digits_oid: 1.3.6.1.4.1.13742.6.3.5.4.1.7.1.*.1}

The driver walks the part before `.*` with GETBULK and keeps the rows that end with the part after it,
so several sensor types under one column cost one walk.

Value in engineering units = raw * 10^-digits * scale, where digits is read from the agent at `digits_oid`
(Raritan's decimalDigits, once per connection; `digits` is the model's usual value, served by the simulator
and used when the agent has no such object). An `enum` maps raw integers to canonical strings; raw values in
`missing` (e.g. -1 "not supported") are omitted, never reported as a value.

Two profile options for tables whose rows are not all alike:

    # Raritan wye inlet: poles 1-3 are the lines, pole 4 the neutral (its own point, current only)
    {name: current_a, oid: ...5.2.4.1.4.1.1.*.1, index_tag: phase, rows: [1, 2, 3]}
    # Raritan serves 0 with sensor state -1 for a value it cannot measure: a BAD sample, not 0.0
    {name: power_factor, oid: ...5.4.3.1.4.1.*.7, state_oid: ...5.4.3.1.3.1.*.7, unavailable_states: [-1]}
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated

from pydantic import Field, model_validator

from dcim.drivers.profiles import PointBase

OID = re.compile(r"^[0-2](\.\d+)+$")
INDEX = "*"
TAG = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


def parse_oid(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@lru_cache(maxsize=4096)
def _split(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    # Cached by the text, not on the point: a point copied with another OID must not keep the old parts.
    """'1.2.*.5' -> ((1, 2), (5,)); without a wildcard -> (the OID, ())."""
    head, _, tail = text.lstrip(".").partition(INDEX)
    tail = tail.strip(".")
    return parse_oid(head.rstrip(".")), parse_oid(tail) if tail else ()


class Point(PointBase):
    oid: str
    # Tag the row index becomes (outlet, phase, bank, probe); required when `oid` holds `*`.
    index_tag: TAG | None = None
    # Constant tags of a scalar point, e.g. {probe: "1"} for a sensor that is its own object.
    tags: dict[TAG, str] = Field(default_factory=dict)
    scale: float = 1.0
    digits_oid: str | None = None
    digits: Annotated[int, Field(ge=0, le=9)] | None = None
    # Write-only objects (e.g. Raritan's switching operation) are not read in a poll.
    readable: bool = True
    # ASN.1 type the agent uses, for SET and for the simulator.
    syntax: str = Field(default="Integer32", pattern=r"^(Integer32|Unsigned32|Gauge32|Counter32)$")
    # A column's rows (first index sub-identifier) that belong to this point; others are another point's.
    rows: list[int] | None = None
    # The sensor's state object (same index as `oid`), read every poll: a state in `unavailable_states`
    # makes the value a BAD sample with the reason, whatever number the value object holds.
    state_oid: str | None = None
    unavailable_states: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Point:
        for label, text in (("oid", self.oid), ("digits_oid", self.digits_oid), ("state_oid", self.state_oid)):
            if text is None:
                continue
            if text.count(INDEX) > 1:
                raise ValueError(f"{label} holds {INDEX} more than once")
            plain = text.replace(INDEX, "1").lstrip(".")
            if not OID.match(plain):
                raise ValueError(f"{label} {text!r} is not a numeric OID (no MIB names: use digits and dots)")
        is_column = INDEX in self.oid
        if is_column and self.index_tag is None:
            raise ValueError(f"oid holds {INDEX}: name the tag the row index becomes with `index_tag`")
        if not is_column and self.index_tag is not None:
            raise ValueError(f"index_tag is set but the oid has no {INDEX}")
        if self.digits_oid is not None and INDEX in self.digits_oid and not is_column:
            raise ValueError(f"digits_oid holds {INDEX} but the point is a scalar")
        if self.rows is not None and not is_column:
            raise ValueError("`rows` selects rows of a column; the oid has no *")
        if (self.state_oid is None) != (not self.unavailable_states):
            raise ValueError("`state_oid` and `unavailable_states` go together")
        if self.state_oid is not None and (INDEX in self.state_oid) != is_column:
            raise ValueError("state_oid must hold * exactly when the oid does")
        if is_column and self.tags:
            raise ValueError("constant `tags` are for scalars; a column's tag comes from its index")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.writable is not False and self.enum is None and not self.readable:
            raise ValueError("a write-only point needs an enum of commands")
        return self

    @property
    def is_column(self) -> bool:
        return INDEX in self.oid

    @property
    def _parts(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return _split(self.oid)

    @property
    def _digits_parts(self) -> tuple[tuple[int, ...], tuple[int, ...], bool] | None:
        if self.digits_oid is None:
            return None
        return (*_split(self.digits_oid), INDEX in self.digits_oid)

    def split(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """A column's (walk prefix, row suffix): the OID before `.*` and after `*.` (a scalar: its OID, ())."""
        return self._parts

    def instance(self, index: tuple[int, ...] = ()) -> tuple[int, ...]:
        """The OID of one value: the scalar itself, or the column's row `index`."""
        prefix, suffix = self._parts
        return prefix + index + suffix if index and self.is_column else prefix + suffix

    def digits_instance(self, index: tuple[int, ...] = ()) -> tuple[int, ...] | None:
        parts = self._digits_parts
        if parts is None:
            return None
        prefix, suffix, indexed = parts
        return prefix + index + suffix if indexed else prefix + suffix

    def state_instance(self, index: tuple[int, ...] = ()) -> tuple[int, ...] | None:
        if self.state_oid is None:
            return None
        prefix, suffix = _split(self.state_oid)
        return prefix + index + suffix if index and self.is_column else prefix + suffix

    def wants_row(self, index: tuple[int, ...]) -> bool:
        return self.rows is None or (bool(index) and index[0] in self.rows)

    def raw_for(self, name: str) -> int:
        """The raw integer of a canonical enum value (for SET)."""
        for raw, text in (self.enum or {}).items():
            if text == name:
                return raw
        raise KeyError(name)
