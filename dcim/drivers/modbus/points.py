"""A Modbus point in a profile.

Register layout of a 32-bit value 0x11223344 at address n, for each byte/word order:

    byte_order big,    word_order big     n: 11 22   n+1: 33 44   (ABCD, the Modbus default)
    byte_order big,    word_order little  n: 33 44   n+1: 11 22   (CDAB, "word swapped")
    byte_order little, word_order big     n: 22 11   n+1: 44 33   (BADC, "byte swapped")
    byte_order little, word_order little  n: 44 33   n+1: 22 11   (DCBA)

Value in engineering units = raw * scale + offset.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from dcim.drivers.profiles import PointBase

DataType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool"]

REGISTER_COUNT: dict[str, int] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float32": 2, "float64": 4, "bool": 1,
}


class Point(PointBase):
    table: Literal["holding", "input", "coil", "discrete"]
    address: Annotated[int, Field(ge=0, le=65535)]
    type: DataType = "uint16"
    # For a flag inside a register: the bit number (0 = least significant); the point reads as bool.
    bit: Annotated[int, Field(ge=0, le=63)] | None = None
    byte_order: Literal["big", "little"] = "big"
    word_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    offset: float = 0.0

    @property
    def is_bit_table(self) -> bool:
        return self.table in ("coil", "discrete")

    @property
    def count(self) -> int:
        """Registers (or bits, for coils and discrete inputs) this point occupies."""
        return 1 if self.is_bit_table else REGISTER_COUNT[self.type]

    @model_validator(mode="after")
    def _consistent(self) -> Point:
        if self.is_bit_table and self.type != "bool":
            raise ValueError(f"{self.table} points are single bits: type must be bool")
        if self.type == "bool" and not self.is_bit_table and self.bit is None:
            raise ValueError("a bool in a register needs `bit`")
        if self.bit is not None and self.bit >= 16 * REGISTER_COUNT[self.type]:
            raise ValueError(f"bit {self.bit} is outside a {self.type}")
        if self.writable is not False and self.table in ("input", "discrete"):
            raise ValueError(f"{self.table} points cannot be written")
        if self.address + self.count - 1 > 65535:
            raise ValueError("the point runs past address 65535")
        return self
