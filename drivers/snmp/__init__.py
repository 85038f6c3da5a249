"""SNMP driver (pysnmp 7, asyncio)."""

from drivers.registry import ProtocolSpec
from drivers.snmp.config import SnmpDevice
from drivers.snmp.points import Point

PROTOCOL = ProtocolSpec(
    name="snmp",
    title="SNMP v1, v2c, v3",
    device=SnmpDevice,
    point=Point,
    driver="drivers.snmp.driver:make_driver",
    simulator="simulators.snmp:serve",
    docs="snmp.md",
)
