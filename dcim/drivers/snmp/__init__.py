"""SNMP driver (pysnmp 7, asyncio)."""

from dcim.drivers.registry import ProtocolSpec
from dcim.drivers.snmp.config import SnmpDevice
from dcim.drivers.snmp.points import Point

PROTOCOL = ProtocolSpec(
    name="snmp",
    title="SNMP v1, v2c, v3",
    device=SnmpDevice,
    point=Point,
    driver="dcim.drivers.snmp.driver:make_driver",
    simulator="dcim.simulators.snmp:serve",
    docs="snmp.md",
)
