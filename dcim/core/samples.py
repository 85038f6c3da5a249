"""Samples: the one currency between drivers, rules and the publisher.

A driver turns protocol traffic into `Sample`s; a poll's samples travel together as a `Batch`.
Values are already scaled to engineering units and carry a canonical point name
(`supply_temp_c`, `power_w`, ...), so nothing downstream knows which vendor or protocol they came from.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

Value = float | int | bool | str


class Quality(enum.StrEnum):
    GOOD = "good"
    # The value is the last one known, but it is older than the device's poll interval allows.
    STALE = "stale"
    # No usable value: the device did not answer, answered with an error, or answered nonsense.
    BAD = "bad"


@dataclass(slots=True, frozen=True)
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

    @property
    def ok(self) -> bool:
        return self.quality is Quality.GOOD and self.value is not None


# A frozen dataclass' own `__init__` sets each field through `object.__setattr__` (about 1.3 us a sample on
# the machines of BENCHMARKS.md); drivers make one per point per poll, so `Sample` is built by setting its
# slots directly instead (about 0.65 us), with the same signature and defaults. Still frozen afterwards.
(_set_device, _set_point, _set_value, _set_ts_ns, _set_quality, _set_reason, _set_measurement,
 _set_tags) = (vars(Sample)[field].__set__ for field in (
    "device", "point", "value", "ts_ns", "quality", "reason", "measurement", "tags"))


def _sample_init(self: Sample, device: str, point: str, value: Value | None, ts_ns: int,
                 quality: Quality = Quality.GOOD, reason: str = "", measurement: str = "",
                 tags: tuple[tuple[str, str], ...] = ()) -> None:
    _set_device(self, device)
    _set_point(self, point)
    _set_value(self, value)
    _set_ts_ns(self, ts_ns)
    _set_quality(self, quality)
    _set_reason(self, reason)
    _set_measurement(self, measurement)
    _set_tags(self, tags)


_sample_init.__qualname__ = "Sample.__init__"
Sample.__init__ = _sample_init  # type: ignore[method-assign]


@dataclass(slots=True)
class Batch:
    """The samples of one poll (or one subscription delivery) of one device."""

    device: str
    kind: str
    ts_ns: int
    samples: list[Sample] = field(default_factory=list)


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
