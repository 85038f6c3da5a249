"""Configuration of a Modbus TCP device."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from dcim.drivers.base import DeviceBase


class ModbusDevice(DeviceBase):
    protocol: Literal["modbus"]
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit_id: Annotated[int, Field(ge=0, le=255)] = 1
    # Largest gap of unused registers bridged to merge two reads into one.
    max_gap: Annotated[int, Field(ge=0, le=124)] = 16
    # Largest read; the protocol's limit is 125 registers (2000 bits).
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    # Requests in flight on the connection shared by every unit id behind the same host:port.
    max_in_flight: Annotated[int, Field(ge=1, le=16)] = 1
