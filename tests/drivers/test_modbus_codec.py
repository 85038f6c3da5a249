"""The codec's pure functions, data-driven: raw registers -> engineering value, and back."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from dcim.drivers.modbus import codec
from dcim.drivers.modbus.points import Point


def point(**fields: Any) -> Point:
    base: dict[str, Any] = {"name": "x", "table": "holding", "address": 0}
    return Point.model_validate({**base, **fields})


def f32(value: float) -> list[int]:
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


# (point fields, registers on the wire, expected value)
DECODE_CASES: list[tuple[dict[str, Any], list[int], Any]] = [
    ({"type": "uint16"}, [0xFFFE], 65534),
    ({"type": "int16"}, [0xFFFE], -2),
    ({"type": "int16", "scale": 0.1}, [0xFF9C], -10.0),
    ({"type": "int16", "byte_order": "little"}, [0xFEFF], -2),
    ({"type": "uint16", "scale": 0.1, "offset": -50}, [1000], 50.0),
    ({"type": "uint32"}, [0x1122, 0x3344], 0x11223344),
    ({"type": "uint32", "word_order": "little"}, [0x3344, 0x1122], 0x11223344),
    ({"type": "uint32", "byte_order": "little"}, [0x2211, 0x4433], 0x11223344),
    ({"type": "uint32", "byte_order": "little", "word_order": "little"}, [0x4433, 0x2211], 0x11223344),
    ({"type": "int32"}, [0xFFFF, 0xFFFE], -2),
    ({"type": "int32", "word_order": "little"}, [0xFFFE, 0xFFFF], -2),
    ({"type": "int32", "scale": 0.001}, [0x0000, 0x9637], 38.455),
    ({"type": "uint64"}, [0x0011, 0x2233, 0x4455, 0x6677], 0x0011223344556677),
    ({"type": "uint64", "word_order": "little"}, [0x6677, 0x4455, 0x2233, 0x0011], 0x0011223344556677),
    ({"type": "int64", "byte_order": "little", "word_order": "little"}, [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF], -2),
    ({"type": "float32"}, f32(180.3), 180.3),
    ({"type": "float32", "word_order": "little"}, f32(180.3)[::-1], 180.3),
    ({"type": "float32", "scale": 2.0, "offset": 1.0}, f32(10.5), 22.0),
    ({"type": "float64"}, [0x4066, 0x8A66, 0x6666, 0x6666], 180.325),
    ({"type": "float64", "word_order": "little"}, [0x6666, 0x6666, 0x8A66, 0x4066], 180.325),
    ({"type": "float64", "byte_order": "little"}, [0x6640, 0x668A, 0x6666, 0x6666], 180.325),
    ({"type": "uint16", "bit": 0}, [0b0101], True),
    ({"type": "uint16", "bit": 1}, [0b0101], False),
    ({"type": "uint16", "bit": 15}, [0x8000], True),
    ({"type": "uint32", "bit": 17}, [0x0002, 0x0000], True),
    ({"type": "uint32", "bit": 17, "word_order": "little"}, [0x0000, 0x0002], True),
    ({"type": "uint16", "bit": 8, "byte_order": "little"}, [0x0001], True),
    ({"type": "uint16", "enum": {1: "ok", 2: "low"}}, [2], "low"),
    ({"type": "uint16", "missing": [65535]}, [65535], None),
    ({"type": "int16", "missing": [-1], "scale": 0.1}, [0xFFFF], None),
]


@pytest.mark.parametrize(("fields", "registers", "expected"), DECODE_CASES)
def test_decode(fields: dict[str, Any], registers: list[int], expected: Any) -> None:
    assert codec.decode(point(**fields), registers) == expected


@pytest.mark.parametrize(("fields", "registers", "expected"), DECODE_CASES)
def test_encode_inverts_decode(fields: dict[str, Any], registers: list[int], expected: Any) -> None:
    p = point(**fields)
    if expected is None or p.bit is not None:
        return
    assert codec.decode(p, codec.encode(p, expected)) == expected
    if p.type not in ("float32", "float64"):
        assert codec.encode(p, expected) == registers


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("kind", ["float32", "float64"])
def test_nan_and_infinity_are_errors_not_values(kind: str, bad: float) -> None:
    p = point(type=kind)
    raw = struct.pack(">f" if kind == "float32" else ">d", bad)
    registers = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    with pytest.raises(codec.DecodeError, match="register holds"):
        codec.decode(p, registers)


def test_unknown_enum_code_is_an_error() -> None:
    with pytest.raises(codec.DecodeError, match="unknown code 7"):
        codec.decode(point(type="uint16", enum={1: "ok"}), [7])


def test_wrong_register_count_is_an_error() -> None:
    with pytest.raises(codec.DecodeError, match="expected 2"):
        codec.decode(point(type="float32"), [1])


@pytest.mark.parametrize(
    ("fields", "value", "registers"),
    [
        ({"type": "int16", "scale": 0.1}, 22.45, [225]),  # nearest, half away from zero
        ({"type": "int16", "scale": 0.1}, -22.45, [0xFF1F]),  # -225
        ({"type": "int16", "scale": 0.1}, 22.44, [224]),
        ({"type": "uint16", "scale": 0.1, "offset": -50}, 50.0, [1000]),
        ({"type": "uint16", "enum": {1: "ok", 2: "low"}}, "low", [2]),
        ({"type": "uint16"}, True, [1]),
    ],
)
def test_encode(fields: dict[str, Any], value: Any, registers: list[int]) -> None:
    assert codec.encode(point(**fields), value) == registers


@pytest.mark.parametrize(
    ("fields", "value", "match"),
    [
        ({"type": "uint16", "scale": 0.1}, 7000.0, "outside what a uint16"),
        ({"type": "uint16"}, -1, "outside what a uint16"),
        ({"type": "int16"}, 32768, "outside what a int16"),
        ({"type": "int32", "scale": 0.001}, 3e6, "outside what a int32"),
        ({"type": "float32"}, 1e39, "overflows float32"),
        ({"type": "float32"}, math.nan, "cannot be written"),
        ({"type": "uint16", "enum": {1: "ok"}}, "broken", "is not one of"),
        ({"type": "uint16"}, "text", "is not a number"),
        ({"type": "uint16", "scale": 0}, 1, "scale 0"),
        ({"type": "uint16", "bit": 3}, True, "encode_bit"),
    ],
)
def test_encode_refuses_what_does_not_fit(fields: dict[str, Any], value: Any, match: str) -> None:
    with pytest.raises(codec.EncodeError, match=match):
        codec.encode(point(**fields), value)


def test_encode_bit_changes_one_bit_only() -> None:
    p = point(type="uint16", bit=3)
    assert codec.encode_bit(p, [0b1_0001], True) == [0b1_1001]
    assert codec.encode_bit(p, [0b1_1001], False) == [0b1_0001]
    wide = point(type="uint32", bit=17, word_order="little")
    assert codec.encode_bit(wide, [0x0000, 0x0000], True) == [0x0000, 0x0002]  # low word first
    with pytest.raises(codec.EncodeError, match="true or false"):
        codec.encode_bit(p, [0], 2)


def test_coil_bits_and_enums() -> None:
    coil = point(table="coil", type="bool")
    assert codec.decode_bit(coil, True) is True
    state = point(table="coil", type="bool", enum={0: "off", 1: "on"})
    assert codec.decode_bit(state, False) == "off"
