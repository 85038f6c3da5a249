"""Modbus TCP driver (pymodbus)."""

from drivers.modbus.config import ModbusDevice
from drivers.modbus.points import Point
from drivers.registry import ProtocolSpec

PROTOCOL = ProtocolSpec(
    name="modbus",
    title="Modbus TCP",
    device=ModbusDevice,
    point=Point,
    driver="drivers.modbus.driver:make_driver",
    simulator="simulators.modbus:serve",
    docs="modbus.md",
)
