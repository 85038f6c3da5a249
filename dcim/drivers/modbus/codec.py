"""Registers <-> engineering values, for one profile point. Pure functions, no I/O.

A multi-register value is laid out by `word_order` (which register holds the most significant word) and
`byte_order` (which byte of each register is sent first). For 0x11223344 at address n:

    byte big,    word big      n: 11 22   n+1: 33 44   ABCD
    byte big,    word little   n: 33 44   n+1: 11 22   CDAB
    byte little, word big      n: 22 11   n+1: 44 33   BADC
    byte little, word little   n: 44 33   n+1: 22 11   DCBA

Decoding: registers -> raw (integer or IEEE float) -> `missing`? -> bit / enum / raw * scale + offset.
Encoding inverts it: integers round to the nearest raw value and must fit the type, or the write is refused.
Whatever the registers hold, decoding gives a value or raises DecodeError with the reason (NaN, infinity, a
scaled value that is no finite number, an unknown enum code, a wrong register count): never anything else.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from dcim.core.samples import Value
from dcim.drivers.modbus.points import REGISTER_COUNT, Point

# struct format (big-endian) of each type's raw value.
_FORMAT: dict[str, str] = {
    "int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "int64": ">q", "uint64": ">Q",
    "float32": ">f", "float64": ">d", "bool": ">H",
}
_UNSIGNED: dict[int, str] = {1: ">H", 2: ">I", 4: ">Q"}
_INT_RANGE: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
    "bool": (0, 1),
}
_FLOAT32_MAX = 3.4028234663852886e38


class DecodeError(ValueError):
    """The registers hold no usable value (NaN, infinity, an unknown enum code). The reason is the message."""


class EncodeError(ValueError):
    """A value cannot be represented in the point's registers; nothing must be sent."""


def _to_bytes(point: Point, registers: Sequence[int]) -> bytes:
    words = list(registers)
    if point.word_order == "little":
        words.reverse()
    data = b"".join(int(w & 0xFFFF).to_bytes(2, "big") for w in words)
    if point.byte_order == "little":
        data = b"".join(data[i + 1 : i + 2] + data[i : i + 1] for i in range(0, len(data), 2))
    return data


def _from_bytes(point: Point, data: bytes) -> list[int]:
    if point.byte_order == "little":
        data = b"".join(data[i + 1 : i + 2] + data[i : i + 1] for i in range(0, len(data), 2))
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if point.word_order == "little":
        words.reverse()
    return words


def raw_value(point: Point, registers: Sequence[int]) -> int | float:
    """The raw number in the point's registers (before bit, enum, scale and offset)."""
    count = REGISTER_COUNT[point.type]
    if len(registers) != count:
        raise DecodeError(f"{point.name}: expected {count} register(s), got {len(registers)}")
    data = _to_bytes(point, registers)
    fmt = _UNSIGNED[count] if point.bit is not None else _FORMAT[point.type]
    value: int | float = struct.unpack(fmt, data)[0]
    if point.type == "float32" and point.bit is None:
        return _shortest_float32(data)
    return value


def _shortest_float32(data: bytes) -> float:
    """The shortest decimal that is the same float32: 180.3, not 180.3000030517578."""
    value: float = struct.unpack(">f", data)[0]
    if not math.isfinite(value):
        return value
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == data:
            return candidate
    return value


def decode(point: Point, registers: Sequence[int]) -> Value | None:
    """Registers -> engineering value; None when the raw value is one of the point's `missing` markers.

    Raises DecodeError for values that must not be stored as numbers (NaN, infinity, unknown enum codes).
    """
    return from_raw(point, raw_value(point, registers))


def from_raw(point: Point, raw: int | float) -> Value | None:
    """The raw number (`raw_value`) -> engineering value: bit, missing markers, enum, scale and offset.
    Shared with the decode plans (decodeplan.py), which find the raw numbers their own way."""
    if point.bit is not None:
        return bool((int(raw) >> point.bit) & 1)
    if point.missing and any(raw == m for m in point.missing):
        return None
    if isinstance(raw, float) and not math.isfinite(raw):
        raise DecodeError(f"{point.name}: register holds {raw}")
    if point.enum is not None:
        if isinstance(raw, float) and not raw.is_integer():
            raise DecodeError(f"{point.name}: {raw} is not an enum code")
        state = point.enum.get(int(raw))
        if state is None:
            raise DecodeError(f"{point.name}: unknown code {int(raw)}")
        return state
    if point.scale == 1.0 and point.offset == 0.0:
        return raw
    try:
        value = raw * point.scale + point.offset
    except OverflowError as err:
        raise DecodeError(f"{point.name}: {raw} cannot be scaled: {err}") from err
    if not math.isfinite(value):
        # A float64 register near its maximum times a scale above 1: no reading, and inf breaks JSON.
        raise DecodeError(f"{point.name}: {raw} x {point.scale:g} + {point.offset:g} is not a finite number")
    # Scaling by 0.1 etc. leaves binary noise (22.400000000000002): keep what the register can resolve.
    return _tidy(value, point.scale)


def _tidy(value: float, scale: float) -> float:
    if scale == 0 or not math.isfinite(value):
        return float(value)
    digits = max(0, -math.floor(math.log10(abs(scale)))) + 6
    return round(float(value), min(digits, 15))


def decode_bit(point: Point, bit: bool) -> Value | None:
    """A coil or discrete input -> bool, or its enum state."""
    if point.enum is not None:
        state = point.enum.get(int(bit))
        if state is None:
            raise DecodeError(f"{point.name}: unknown code {int(bit)}")
        return state
    return bool(bit)


def _raw_for(point: Point, value: Value) -> int | float:
    """Engineering value -> raw number, with the enum mapped back and scale/offset inverted."""
    if point.enum is not None:
        if isinstance(value, str):
            for code, state in point.enum.items():
                if state == value:
                    return code
            raise EncodeError(f"{point.name}: {value!r} is not one of {', '.join(point.enum.values())}")
        if isinstance(value, int) and not isinstance(value, bool) and value in point.enum:
            return value
        raise EncodeError(f"{point.name}: {value!r} is not a state of this point")
    if isinstance(value, str):
        raise EncodeError(f"{point.name}: {value!r} is not a number")
    if isinstance(value, int) and point.scale == 1.0 and point.offset.is_integer():
        # Exact: a 64-bit counter must not pass through a float.
        return int(value) - int(point.offset)
    number = float(value)
    if not math.isfinite(number):
        raise EncodeError(f"{point.name}: {value} cannot be written")
    if point.scale == 0:
        raise EncodeError(f"{point.name}: scale 0 cannot be inverted")
    return (number - point.offset) / point.scale


def _nearest(raw: float) -> int:
    # Round half away from zero, after dropping the binary noise of the division (22.4999999 -> 22.5).
    raw = round(raw, 6)
    return int(math.copysign(math.floor(abs(raw) + 0.5), raw))


def encode(point: Point, value: Value) -> list[int]:
    """Engineering value -> the point's registers. Raises EncodeError when the value does not fit."""
    if point.bit is not None:
        raise EncodeError(f"{point.name}: a bit is written with encode_bit (it shares its register)")
    raw = _raw_for(point, value)
    if point.type in ("float32", "float64"):
        if point.type == "float32" and abs(raw) > _FLOAT32_MAX:
            raise EncodeError(f"{point.name}: {value} overflows float32")
        data = struct.pack(_FORMAT[point.type], float(raw))
    else:
        number = raw if isinstance(raw, int) else _nearest(raw)
        low, high = _INT_RANGE[point.type]
        if not low <= number <= high:
            lo_v = low * point.scale + point.offset
            hi_v = high * point.scale + point.offset
            raise EncodeError(
                f"{point.name}: {value} is outside what a {point.type} with scale {point.scale:g} "
                f"and offset {point.offset:g} holds ({min(lo_v, hi_v):g}..{max(lo_v, hi_v):g})"
            )
        data = struct.pack(_FORMAT[point.type], number)
    return _from_bytes(point, data)


def encode_bit(point: Point, registers: Sequence[int], value: Value) -> list[int]:
    """Set or clear the point's bit in the current registers (read-modify-write of a flag word)."""
    if point.bit is None:
        raise EncodeError(f"{point.name}: not a bit flag")
    if isinstance(value, str) or value not in (0, 1):
        raise EncodeError(f"{point.name}: a flag is true or false, not {value!r}")
    raw = int(raw_value(point, registers))
    raw = raw | (1 << point.bit) if value else raw & ~(1 << point.bit)
    count = REGISTER_COUNT[point.type]
    return _from_bytes(point, raw.to_bytes(2 * count, "big"))
