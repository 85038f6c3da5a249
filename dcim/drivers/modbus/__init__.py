"""Modbus TCP driver (dcim's own client in transport.py; pymodbus serves the simulators)."""

from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.modbus.points import Point
from dcim.drivers.registry import ProtocolSpec

PROTOCOL = ProtocolSpec(
    name="modbus",
    title="Modbus TCP",
    device=ModbusDevice,
    point=Point,
    driver="dcim.drivers.modbus.driver:make_driver",
    simulator="dcim.simulators.modbus:serve",
    docs="modbus.md",
)
