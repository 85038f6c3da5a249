"""OPC UA driver (asyncua)."""

from drivers.opcua.config import OpcUaDevice
from drivers.opcua.points import Point
from drivers.registry import ProtocolSpec

PROTOCOL = ProtocolSpec(
    name="opcua",
    title="OPC UA",
    device=OpcUaDevice,
    point=Point,
    driver="drivers.opcua.driver:make_driver",
    simulator="simulators.opcua:serve",
    commands="drivers.opcua.cli",
    docs="opcua.md",
)
