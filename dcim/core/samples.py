"""Samples: the one currency between drivers, rules and the publisher.

A driver turns protocol traffic into `Sample`s; a poll's samples travel together as a `Batch`.
Values are already scaled to engineering units and carry a canonical point name
(`supply_temp_c`, `power_w`, ...), so nothing downstream knows which vendor or protocol they came from.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar, dataclass_transform

Value = float | int | bool | str


class Quality(enum.StrEnum):
    GOOD = "good"
    # The value is the last one known, but it is older than the device's poll interval allows.
    STALE = "stale"
    # No usable value: the device did not answer, answered with an error, or answered nonsense.
    BAD = "bad"


T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def slots_record(cls: type[T]) -> type[T]:
    """A dataclass with slots, read-only to the type checker but not enforced at run time.

    A frozen dataclass' `__init__` sets each field through `object.__setattr__`, and any class that refuses
    assignment at run time needs a `__setattr__` of its own, which keeps the interpreter from storing into
    the slots directly: about 0.7 us a `Sample` against 0.25 us for a plain slots `__init__` (measured with
    timeit on the machines of BENCHMARKS.md). Drivers make one per point per poll, so `Sample` takes the
    plain one. Nothing assigns to a sample's fields: mypy (`make typecheck`, strict) refuses it as it would
    for a frozen dataclass. Equality, hashing (of every field), `repr`, pickling and `dataclasses.replace`
    are the dataclass' own."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


@slots_record
class Sample:
    device: str
    point: str
    value: Value | None
    ts_ns: int
    quality: Quality = Quality.GOOD
    reason: str = ""
    # Measurement (InfluxDB) this sample belongs to: the device kind, or a row table such as `pdu_outlet`.
    measurement: str = ""
    # Extra tags of table rows, e.g. (("outlet", "7"),) or (("phase", "L1"),). Sorted by key.
    tags: tuple[tuple[str, str], ...] = ()
    # The value's field text in the line protocol (`repr` of the float), when the driver had it from its
    # decoding (a float32's shortest digits): the encoder takes it as it is instead of formatting the value
    # again. Empty: the encoder formats the value. Not part of what the sample is (equality, hash, repr). A
    # copy with another value (`dataclasses.replace(sample, value=...)`) must say text="" too.
    text: str = field(default="", compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.quality is Quality.GOOD and self.value is not None


@dataclass(frozen=True, slots=True, eq=False)
class Layout:
    """What a driver's fixed read plan makes of a poll that read every point well: sample `i` of the batch is
    point `points[i]` of measurement `measurements[i]`, with no row tags, GOOD, with a value (and its line
    protocol text in `text` where the driver had one, as ever: a float32's shortest digits).

    A driver gives its batches that read so the same `Layout` object every time (`Batch.layout`), and the
    sinks that keep something per point (the rules' readings, the console's live view, the poller's known
    series) or encode every point (the line protocol) key what they work out by it: a poll like the last
    one updates what they keep in place, in the batch's order, without looking each point up again, and is
    encoded from field names joined once. A batch without one (a failed read, a BAD value, a subscription's
    changes) goes the general way, and what those sinks kept for the layout is worked out again at its next
    batch. Compared by identity; never changed once made, but for the encoders it caches."""

    points: tuple[str, ...]
    measurements: tuple[str, ...]
    # Whether the values come with their line protocol text (every point a float32 of the driver's plain
    # reads): only then is the batch encoded from the layout (a value's text made here, a sample at a time,
    # cost more than the general way's inline formatting).
    texts: bool = False
    # The line protocol's encodings of this layout's batches, by (device kind, static tags): `lineproto`'s.
    encodings: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.points) != len(self.measurements):
            raise ValueError("a layout has a measurement for each point")


@dataclass(slots=True)
class Batch:
    """The samples of one poll (or one subscription delivery) of one device. `layout`: the driver's word
    that the samples are laid out as it says (`Layout`), or None."""

    device: str
    kind: str
    ts_ns: int
    samples: list[Sample] = field(default_factory=list)
    layout: Layout | None = None


@dataclass(slots=True, frozen=True)
class DeviceStatus:
    """Availability of a device: `online` means its last poll succeeded."""

    device: str
    kind: str
    online: bool
    ts_ns: int
    error: str = ""


def now_ns() -> int:
    return time.time_ns()
