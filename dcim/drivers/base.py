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

    id: Id
    kind: DeviceKind
    # The protocol's name in drivers.registry; each protocol's model narrows it to `Literal[name]`, the tag of
    # the configuration's device union.
    protocol: str
    profile: str
    host: str = "127.0.0.1"
    interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    # Placement in the topology; a PDU also names the rack and feed it serves.
    room: str | None = None
    row: str | None = None
    rack: str | None = None
    feed: Literal["a", "b"] | None = None
    # Served by `dcim simulate` (and by `dcim demo`).
    simulate: bool = False
    enabled: bool = True


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
