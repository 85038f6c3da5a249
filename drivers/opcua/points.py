"""An OPC UA point in a profile."""

from __future__ import annotations

from drivers.profiles import PointBase


class Point(PointBase):
    # `nsu=<namespace uri>;s=<id>` (or i=, g=, b=), or a browse path; never a bare namespace index.
    node: str
