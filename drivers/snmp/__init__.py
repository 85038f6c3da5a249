"""SNMP driver (pysnmp 7, asyncio)."""
