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

from collections.abc import Callable, Hashable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import ValidationError

from dcim.core.config import error_path
from dcim.core.resources import package_path
from dcim.drivers.profile_model import CANONICAL as CANONICAL
from dcim.drivers.profile_model import PointBase as PointBase
from dcim.drivers.profile_model import Profile as Profile
from dcim.drivers.profile_model import WriteRange as WriteRange
from dcim.drivers.registry import PROTOCOLS

BUILTIN_DIR = package_path("dcim.drivers", "profiles")  # the installed package's, wherever it is
class ProfileError(Exception):
    """A profile file is missing or invalid; `errors` holds (path, message) pairs."""

    def __init__(self, name: str, errors: list[tuple[str, str]]) -> None:
        self.name = name
        self.errors = errors
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in errors) or name)


T = TypeVar("T")


class ByProfile(Generic[T]):
    """What is worked out once per profile object (and `key`), not once a device: a read plan, a digest.
    Profiles are cached and immutable, so the object's identity is the key, and the profile is kept with its
    value so that id stays its own. Profiles are few: the table is cleared if it ever holds more than
    `limit` entries (objects of earlier reloads are let go)."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._table: dict[tuple[Hashable, ...], tuple[object, T]] = {}

    def get(self, profile: object, make: Callable[[], T], *key: Hashable) -> T:
        found = self._table.get((id(profile), *key))
        if found is not None and found[0] is profile:
            return found[1]
        value = make()
        if len(self._table) >= self.limit:
            self._table.clear()
        self._table[(id(profile), *key)] = (profile, value)
        return value

    def __len__(self) -> int:
        return len(self._table)


def point_model(protocol: str) -> type[PointBase]:
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
        # libyaml's parser where PyYAML has it: the profiles are most of the YAML read at start-up (7x faster).
        raw = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as err:
        raise ProfileError(path.stem, [(str(path), str(err))]) from err
    return parse_profile(raw, source=str(path))


def parse_profile(raw: Any, source: str = "<profile>") -> Profile[Any]:
    if not isinstance(raw, dict):
        raise ProfileError(source, [(source, "a profile must be a mapping")])
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


def load_profile(name: str, extra_dirs: tuple[Path, ...] = (), found: Mapping[str, Path] | None = None) -> Profile[Any]:
    """The profile called `name`, from the built-in profiles and `extra_dirs` (read once per file). `found`:
    what `available_profiles(extra_dirs)` gave, for a caller that loads many (one glob of the directories
    for a configuration of 21,500 devices instead of one a device: 1.5 s of a start)."""
    if found is None:
        found = available_profiles(extra_dirs)
    path = found.get(name)
    if path is None:
        known = ", ".join(found) or "none"
        raise ProfileError(name, [(name, f"unknown profile {name!r} (known: {known})")])
    profile = _load_cached(path)
    if profile.name != name:
        raise ProfileError(name, [(str(path), f"file is named {name} but declares name {profile.name!r}")])
    return profile
