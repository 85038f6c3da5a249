"""An SNMP point in a profile."""

from __future__ import annotations

from drivers.profiles import PointBase


class Point(PointBase):
    # Numeric OID without the leading dot. For a table column, the column OID: its rows are walked and
    # the row index becomes the tag named by `index_tag`.
    oid: str
    index_tag: str | None = None
    scale: float = 1.0
