"""Device profiles: a device model's point map, as data.

One YAML file per model under drivers/profiles/ (or a directory named in the configuration). One profile
serves the driver (addresses, types, scaling), the simulator (what to serve), the rules (units, writable
ranges) and the dashboards (canonical names). Adding a device model is adding a file.

    name: generic-cdu            # must equal the file name
    kind: cdu                    # pdu | cdu | chiller
    protocol: modbus             # a registered protocol (drivers.registry): modbus | snmp | opcua built in
    vendor: ...; model: ...; description: ...
    defaults: {byte_order: big}  # merged into every point before validation
    points:
      - {name: supply_temp_c, unit: degC, table: input, address: 0, type: int16, scale: 0.1}

Each protocol declares its own point model on top of `PointBase` in its registry entry (drivers.registry).
"""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import yaml
from pydantic import Field, ValidationError, model_validator

from dcim.core.config import DeviceKind, StrictModel, error_path
from dcim.core.samples import Value
from drivers.errors import WriteRejected

BUILTIN_DIR = Path(__file__).parent / "profiles"
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


class ProfileError(Exception):
    """A profile file is missing or invalid; `errors` holds (path, message) pairs."""

    def __init__(self, name: str, errors: list[tuple[str, str]]) -> None:
        self.name = name
        self.errors = errors
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in errors) or name)


def point_model(protocol: str) -> type[PointBase]:
    # Imported here: the registry imports this module (PointBase, Profile).
    from drivers.registry import PROTOCOLS

    return PROTOCOLS.get(protocol).point


def available_profiles(extra_dirs: tuple[Path, ...] = ()) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in (BUILTIN_DIR, *extra_dirs):
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")):
                found[path.stem] = path
    return found


def load_profile_file(path: Path) -> Profile[Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ProfileError(path.stem, [(str(path), str(err))]) from err
    return parse_profile(raw, source=str(path))


def parse_profile(raw: Any, source: str = "<profile>") -> Profile[Any]:
    if not isinstance(raw, dict):
        raise ProfileError(source, [(source, "a profile must be a mapping")])
    from drivers.registry import PROTOCOLS

    protocol = raw.get("protocol")
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise ProfileError(source, [("protocol", f"must be one of {', '.join(PROTOCOLS.names())}, not {protocol!r}")])
    data = dict(raw)
    defaults = data.pop("defaults", {}) or {}
    if isinstance(data.get("points"), list) and isinstance(defaults, dict):
        data["points"] = [{**defaults, **p} if isinstance(p, dict) else p for p in data["points"]]
    model: Any = Profile[point_model(protocol)]  # type: ignore[misc]
    try:
        profile: Profile[Any] = model.model_validate(data)
    except ValidationError as err:
        raise ProfileError(source, [(error_path(e["loc"]), e["msg"]) for e in err.errors()]) from err
    return profile


@cache
def _load_cached(path: Path) -> Profile[Any]:
    return load_profile_file(path)


def load_profile(name: str, extra_dirs: tuple[Path, ...] = ()) -> Profile[Any]:
    path = available_profiles(extra_dirs).get(name)
    if path is None:
        known = ", ".join(available_profiles(extra_dirs)) or "none"
        raise ProfileError(name, [(name, f"unknown profile {name!r} (known: {known})")])
    profile = _load_cached(path)
    if profile.name != name:
        raise ProfileError(name, [(str(path), f"file is named {name} but declares name {profile.name!r}")])
    return profile
