"""The protocol registry: every protocol dcim speaks declares itself here, built-in or plugin.

A protocol is one package whose `__init__` exposes `PROTOCOL`, a `ProtocolSpec`:

    PROTOCOL = ProtocolSpec(
        name="modbus", title="Modbus TCP",
        device=ModbusDevice,                         # pydantic, on drivers.base.DeviceBase; `protocol: Literal[name]`
        point=Point,                                 # pydantic, on drivers.profiles.PointBase
        driver="dcim.drivers.modbus.driver:make_driver",  # (device, profile, DriverContext) -> Driver
        simulator="dcim.simulators.modbus:serve",         # serve(plant, devices, *, profile_dirs, ready)
    )

The built-ins are the packages in `BUILTIN`; an installed package adds one with an entry point of the group
`dcim.protocols` naming its `PROTOCOL`. The configuration's device union, profile loading, the driver factory,
`dcim simulate` and the docs' protocol tables are all built from `PROTOCOLS`.

Driver and simulator are "module:function" strings, imported on first use: loading a configuration must not
import every protocol library, and this layer must not import the simulators (they sit above it).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from dcim.core.registry import Registry, RegistryError
from dcim.drivers.base import DeviceBase, Driver, DriverContext
from dcim.drivers.profile_model import PointBase, Profile

__all__ = ["BUILTIN", "PROTOCOLS", "ProtocolSpec", "RegistryError", "SimulatorServe", "make_driver", "protocol_of"]

# The built-in protocols: one line each.
BUILTIN = (
    "dcim.drivers.modbus",
    "dcim.drivers.snmp",
    "dcim.drivers.opcua",
)

DriverFactory = Callable[[DeviceBase, Profile[Any], DriverContext], Driver]


class SimulatorServe(Protocol):
    """A protocol's simulator: serve `devices` from the plant until cancelled.

    `ready` is set by the simulator itself once every device's socket is bound (and not before), so whoever
    waits for it can connect at once: nobody probes ports. A simulator that cannot bind raises instead.
    `plant` is a `dcim.simulators.plant.Plant`, typed loosely because this layer sits below the simulators.
    """

    def __call__(self, plant: Any, devices: list[Any], *, profile_dirs: tuple[Path, ...] = (),
                 ready: asyncio.Event | None = None) -> Coroutine[Any, Any, None]: ...


def _resolve(ref: str, what: str) -> Any:
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise RegistryError(f"{what} {ref!r} is not of the form 'module:function'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RegistryError(f"{what} {ref!r}: module {module_name} has no {attr!r}") from None


@dataclass(frozen=True, kw_only=True)
class ProtocolSpec:
    name: str
    # For people: tables, help texts.
    title: str
    device: type[DeviceBase]
    point: type[PointBase]
    # "module:function": (device, profile, DriverContext) -> Driver.
    driver: str
    # "module:function" with the signature of `SimulatorServe`; None when the protocol has no simulator.
    simulator: str | None = None
    # A module with `register(subparsers)` adding `dcim` subcommands of this protocol (e.g. `opcua-cert`).
    commands: str | None = None
    # The protocol's page under docs/, for the docs' protocol table.
    docs: str | None = None

    def __post_init__(self) -> None:
        field = self.device.model_fields.get("protocol")
        if field is None or getattr(field.annotation, "__args__", None) != (self.name,):
            raise RegistryError(f"protocol {self.name!r}: {self.device.__name__} needs "
                                f"`protocol: Literal[{self.name!r}]` (it tags the configuration's device union)")

    def driver_factory(self) -> DriverFactory:
        return cast(DriverFactory, _resolve(self.driver, f"protocol {self.name}: driver"))

    def simulator_serve(self) -> SimulatorServe:
        if self.simulator is None:
            raise RegistryError(f"protocol {self.name!r} has no simulator")
        return cast(SimulatorServe, _resolve(self.simulator, f"protocol {self.name}: simulator"))


class _ProtocolRegistry(Registry[ProtocolSpec]):
    """Loads the built-ins on first use (before the plugins, which may then replace one on purpose)."""

    def __init__(self) -> None:
        super().__init__("protocol", "dcim.protocols", lambda spec: spec.name)
        self._builtins_loaded = False

    def load_plugins(self) -> None:
        if not self._builtins_loaded:
            # Set first: a built-in package that looks itself up while importing must not recurse.
            self._builtins_loaded = True
            for package in BUILTIN:
                self.register(importlib.import_module(package).PROTOCOL)
        super().load_plugins()


PROTOCOLS: Registry[ProtocolSpec] = _ProtocolRegistry()


def protocol_of(device: DeviceBase) -> ProtocolSpec:
    return PROTOCOLS.get(device.protocol)


def make_driver(device: DeviceBase, profile: Profile[Any], context: DriverContext) -> Driver:
    """The driver of a configured device, from its protocol's factory."""
    return protocol_of(device).driver_factory()(device, profile, context)


def markdown_table(specs: tuple[ProtocolSpec, ...] | None = None) -> str:
    """The docs' table of protocols (docs/contributing.md carries the built-ins'; a test keeps it current)."""
    rows = ["| protocol | what | device model | point model | driver | simulator | docs |",
            "|---|---|---|---|---|---|---|"]
    for spec in specs if specs is not None else tuple(PROTOCOLS):
        docs = f"[{spec.docs}]({spec.docs})" if spec.docs else ""
        rows.append(f"| `{spec.name}` | {spec.title} | `{spec.device.__module__}.{spec.device.__qualname__}` "
                    f"| `{spec.point.__module__}.{spec.point.__qualname__}` | `{spec.driver}` "
                    f"| {f'`{spec.simulator}`' if spec.simulator else ''} | {docs} |")
    return "\n".join(rows)
