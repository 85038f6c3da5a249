"""OPC UA driver (asyncua) for chillers: `make_driver` picks subscriptions (default) or polling.

    driver = make_driver(device, profile, DriverContext())
    await driver.subscribe(emit, status)     # mode: subscribe; until cancelled, reconnects by itself
    samples = await driver.read()             # one Read request for every point (both modes)
    await driver.write("setpoint_c", 17.5)    # range-checked, converted to the node's DataType, then sent
"""

from __future__ import annotations

from typing import Any

from dcim.drivers.base import DriverContext
from dcim.drivers.opcua.config import OpcUaDevice
from dcim.drivers.opcua.polled import OpcUaDriver
from dcim.drivers.opcua.subscriber import OpcUaSubscriber
from dcim.drivers.profiles import Profile

__all__ = ["OpcUaDriver", "OpcUaSubscriber", "make_driver"]


def make_driver(device: Any, profile: Profile[Any], context: DriverContext) -> OpcUaDriver:
    """`mode: subscribe` (default) gives a Subscriber; `mode: poll` a plain polled driver."""
    if not isinstance(device, OpcUaDevice):
        raise TypeError(f"{getattr(device, 'id', device)!r} is not an OPC UA device")
    if profile.protocol != "opcua":
        raise TypeError(f"profile {profile.name} is for {profile.protocol}, not opcua")
    if device.mode == "poll":
        return OpcUaDriver(device, profile)
    return OpcUaSubscriber(device, profile)
