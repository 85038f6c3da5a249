"""Modbus TCP driver (pymodbus)."""
