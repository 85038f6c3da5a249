"""An OPC UA point in a profile.

A node is named so that it survives a server restart, which may renumber namespace indexes:

    node: "nsu=urn:dcim:generic-chiller;s=Chiller.LeavingTemp"   # NodeId with its namespace URI (s=, i=, g=, b=)
    node: "/Chiller/Cop"                                           # browse path from the Objects folder

Browse path segments are `Name` (in the profile's `options.namespace`) or `{uri}Name` (Clark notation).
A bare namespace index (`ns=2;s=...`) is refused: it is only valid for one run of one server.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from dcim.core.config import StrictModel
from dcim.drivers.profiles import PointBase


class Ratio(StrictModel):
    """A point the driver derives when the server lacks the node (e.g. COP = cooling_kw / power_kw)."""

    numerator: str
    denominator: str


class Point(PointBase):
    node: str = Field(min_length=2)
    # Per-point deadband override (absolute, in the point's unit); None uses the device's deadband.
    deadband: float | None = Field(default=None, ge=0)
    derive: Ratio | None = None

    @field_validator("node")
    @classmethod
    def _node_form(cls, value: str) -> str:
        if value.startswith("/"):
            if any(not part for part in value[1:].split("/")):
                raise ValueError(f"empty segment in browse path {value!r}")
            return value
        if value.startswith("ns="):
            raise ValueError(
                f"{value!r} names a bare namespace index, which changes when a server restarts: "
                "use nsu=<namespace uri>;... or a browse path"
            )
        if not value.startswith("nsu="):
            raise ValueError(f"{value!r}: a node is nsu=<uri>;s=<id> (or i=, g=, b=) or a browse path /A/B")
        uri, sep, ident = value[4:].partition(";")
        if not sep or not uri or ident[:2] not in ("s=", "i=", "g=", "b=") or len(ident) < 3:
            raise ValueError(f"{value!r}: expected nsu=<uri>;s=<id> (or i=, g=, b=)")
        return value
