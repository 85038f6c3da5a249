"""OPC UA driver (asyncua)."""

from dcim.drivers.opcua.config import OpcUaDevice
from dcim.drivers.opcua.points import Point
from dcim.drivers.registry import ProtocolSpec

PROTOCOL = ProtocolSpec(
    name="opcua",
    title="OPC UA",
    device=OpcUaDevice,
    point=Point,
    driver="dcim.drivers.opcua.driver:make_driver",
    simulator="dcim.simulators.opcua:serve",
    commands="dcim.drivers.opcua.cli",
    docs="opcua.md",
)
