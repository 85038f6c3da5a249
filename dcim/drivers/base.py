"""The small shared interface every protocol driver implements.

A driver knows its device's protocol and profile, nothing of MQTT, InfluxDB or rules:

    driver = make_driver(device_config, context)
    await driver.connect()
    samples = await driver.read()             # one poll, values in engineering units
    await driver.write("setpoint_c", 32.0)     # canonical write, range-checked before sending
    await driver.close()

Drivers that can push changes (OPC UA subscriptions) also implement `Subscriber.subscribe`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import Field

from dcim.core.config import DeviceKind, Id, PositiveDuration, StrictModel
from dcim.core.samples import Sample, Value

if TYPE_CHECKING:
    from dcim.drivers.profile_model import Profile

class DeviceBase(StrictModel):
    """Fields common to every device; each protocol adds its own in drivers/<protocol>/config.py."""

    id: Id = Field(examples=["cdu-1", "pdu-a01a", "chiller-1"])
    """Device id, unique in the site (letters, digits, `_`, `.`, `-`): the last level of its MQTT topic, tag
    `device` of its series, the name `dcim read` takes."""
    kind: DeviceKind
    """What the device is: pdu (rack power distribution), cdu (coolant distribution unit) or chiller."""
    # The protocol's name in drivers.registry; each protocol's model narrows it to `Literal[name]`, the tag of
    # the configuration's device union.
    protocol: str
    """How dcim talks to it: snmp, modbus or opcua (or a protocol an installed plugin adds); selects the
    fields below that apply."""
    profile: str = Field(examples=["apc-rpdu2", "raritan-px", "generic-cdu", "generic-chiller"])
    """The device profile (point map) for its make and model: a built-in name or a file in `profile_dirs`."""
    host: str = Field(default="127.0.0.1", examples=["10.20.2.11", "pdu-a01a.mgmt.example"])
    """Host name or address of the device (or of its gateway)."""
    interval: PositiveDuration = 1.0
    """Poll interval (seconds or e.g. "2s"); an overloaded daemon stretches it rather than falling behind."""
    timeout: PositiveDuration = 1.0
    """Timeout of one request to the device."""
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    """Retries of a request that timed out, before the poll counts as failed."""
    room: str | None = Field(default=None, examples=["dh1"])
    """Room the device stands in (tag `room`); a PDU named by a rack's feed takes its rack's room."""
    row: str | None = Field(default=None, examples=["A"])
    """Row the device stands in (tag `row`)."""
    rack: str | None = Field(default=None, examples=["A01"])
    """Rack the device serves (tag `rack`); a PDU named by a rack's feed gets it from there."""
    feed: Literal["a", "b"] | None = None
    """Feed of its rack a PDU is on (tag `feed`); a PDU named by a rack's feed gets it from there."""
    simulate: bool = False
    """Served by a simulator under `dcim simulate` and `dcim demo` (lab and demo configurations)."""
    enabled: bool = True
    """false: keep the entry but do not poll the device."""


class DriverContext:
    """Resources drivers share within one process (e.g. one Modbus connection per gateway)."""

    def __init__(self) -> None:
        self.shared: dict[str, Any] = {}


class Driver(abc.ABC):
    """One device: connect, read a poll's worth of samples, write canonical points."""

    def __init__(self, device: DeviceBase, profile: Profile[Any]) -> None:
        self.device = device
        self.profile = profile

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open (or join) the connection. Raises DriverError."""

    @abc.abstractmethod
    async def read(self) -> list[Sample]:
        """Read every point of the profile once. Raises DriverError when the device cannot be read at all;
        a point that cannot be decoded comes back as a BAD sample with its reason."""

    @abc.abstractmethod
    async def write(self, point: str, value: Value) -> None:
        """Write a canonical point. Raises WriteRejected before sending if the point is not writable or
        the value is outside the profile's range; DriverError if the device refuses."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection. Never raises."""


SampleCallback = Callable[[list[Sample]], None]
# (online, error): called on every change of availability, error "" when online.
StatusCallback = Callable[[bool, str], None]


@runtime_checkable
class Subscriber(Protocol):
    """A driver that pushes changes instead of being polled (OPC UA monitored items)."""

    async def subscribe(self, emit: SampleCallback, status: StatusCallback) -> None:
        """Deliver samples through `emit` until cancelled. On a lost connection: report offline through
        `status`, emit the last values as STALE (so the gap is visible), reconnect with backoff and
        re-create the subscriptions by itself, then report online again. Never returns normally."""
