"""Configuration of a Modbus TCP device."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from dcim.drivers.base import DeviceBase


class ModbusDevice(DeviceBase):
    """A device polled over Modbus TCP (a CDU, or anything behind a Modbus gateway)."""

    protocol: Literal["modbus"]
    """Modbus TCP."""
    port: Annotated[int, Field(ge=1, le=65535, examples=[502])] = 502
    """TCP port of the device or of its Modbus gateway."""
    unit_id: Annotated[int, Field(ge=0, le=255, examples=[1])] = 1
    """Modbus unit (slave) id; behind a gateway, the address of the device on its serial bus."""
    max_gap: Annotated[int, Field(ge=0, le=124)] = 16
    """Largest gap of unused registers bridged to merge two reads into one (some devices refuse reads
    across unmapped registers: set 0 for those)."""
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    """Largest read, in registers; the protocol's limit is 125 (some devices accept fewer)."""
    max_in_flight: Annotated[int, Field(ge=1, le=16)] = 1
    """Requests in flight at once on the connection shared by every unit id behind the same host:port
    (most gateways handle only one)."""
