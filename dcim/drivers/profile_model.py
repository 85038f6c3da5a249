"""The profile model: a device model's point map as typed data (points, write ranges, the profile itself).

Loading profiles from files lives in drivers.profiles; each protocol's point model extends `PointBase`.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Generic, TypeVar

from pydantic import Field, model_validator

from dcim.core.config import DeviceKind, StrictModel
from dcim.core.samples import Value
from dcim.drivers.errors import WriteRejected

CANONICAL = re.compile(r"^[a-z][a-z0-9_]*$")


class WriteRange(StrictModel):
    min: float
    max: float
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> WriteRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class PointBase(StrictModel):
    name: Annotated[str, Field(pattern=CANONICAL.pattern)]
    unit: str = ""
    description: str = ""
    # InfluxDB measurement, when not the device kind (e.g. `pdu_outlet` for outlet rows).
    measurement: str | None = None
    # Raw integer -> canonical value, for states and commands (e.g. {1: "off", 2: "on"}).
    enum: dict[int, str] | None = None
    # Raw values that mean "not supported / not present": read as missing, never as a value.
    missing: list[float] = Field(default_factory=list)
    # A numeric range for setpoints; `true` for enum or boolean commands.
    writable: WriteRange | bool = False

    def check_write(self, value: Value) -> Value:
        """Validate a canonical write against the profile. Returns the value to encode."""
        if self.writable is False:
            raise WriteRejected(f"point {self.name!r} is read-only")
        if self.enum is not None:
            if isinstance(value, str):
                if value not in self.enum.values():
                    allowed = ", ".join(sorted(set(self.enum.values())))
                    raise WriteRejected(f"{self.name}: {value!r} is not one of {allowed}")
                return value
            if isinstance(value, int) and not isinstance(value, bool) and value in self.enum:
                return self.enum[value]
            raise WriteRejected(f"{self.name}: {value!r} is not a valid command")
        if isinstance(self.writable, WriteRange):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise WriteRejected(f"{self.name}: {value!r} is not a number")
            number = float(value)
            if not math.isfinite(number) or number < self.writable.min or number > self.writable.max:
                raise WriteRejected(
                    f"{self.name}: {value} {self.unit} is outside the allowed range "
                    f"{self.writable.min}..{self.writable.max} {self.unit}"
                )
            step = self.writable.step
            if step is not None:
                steps = (number - self.writable.min) / step
                if abs(steps - round(steps)) > 1e-6:
                    raise WriteRejected(f"{self.name}: {value} is not a multiple of the step {step}")
            return number
        if not isinstance(value, bool | int | float):
            raise WriteRejected(f"{self.name}: {value!r} is not a valid value")
        return value


P = TypeVar("P", bound=PointBase)


class Profile(StrictModel, Generic[P]):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
    kind: DeviceKind
    # A registered protocol (drivers.registry); `parse_profile` checks it and picks the protocol's point model.
    protocol: str
    vendor: str = ""
    model: str = ""
    description: str = ""
    points: list[P]
    # Protocol-specific profile-wide settings (e.g. an SNMP table's index columns). Free-form on purpose:
    # the protocol's driver validates what it reads from here.
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_points(self) -> Profile[P]:
        seen: set[tuple[str, str, str]] = set()
        for point in self.points:
            # A table point (SNMP `index_tag`) is its own series: phase and bank rows may share a name.
            key = (point.measurement or self.kind, point.name, getattr(point, "index_tag", None) or "")
            if key in seen:
                raise ValueError(f"point {point.name!r} is defined twice")
            seen.add(key)
        return self

    def point(self, name: str) -> P:
        for point in self.points:
            if point.name == name:
                return point
        raise WriteRejected(f"profile {self.name} has no point {name!r}")

    def measurement(self, point: PointBase) -> str:
        return point.measurement or self.kind
