"""Decode plans: a read's registers -> values with a few precompiled `struct` calls, built once per driver.

`codec.decode` handles one point at a time: it turns the point's registers back into bytes, reorders them
and unpacks them, several microseconds per point. A plan does that work once, when the driver is created:

- A read's registers are packed into bytes once per poll, in both byte orders ("big": each register's high
  byte first; "swapped": its low byte first). Every word/byte order is then a plain big- or little-endian
  struct format over one of the two:

      byte big,    word big     (ABCD)   big block,     ">" format
      byte little, word big     (BADC)   swapped block, ">" format
      byte big,    word little  (CDAB)   swapped block, "<" format   (low word first = little-endian words)
      byte little, word little  (DCBA)   big block,     "<" format

- Points that read the same block with the same endianness and do not overlap are unpacked together by one
  precompiled `struct.Struct` (gaps are pad bytes); points that overlap others (bit flags sharing a status
  word) get a Struct of their own.
- What follows the raw number (missing markers, bit, enum, scale and offset, the shortest float32 text) is
  `codec.from_raw`, with the common cases (a plain or scaled number, a bit flag, a known enum code, without
  missing markers) done inline from values computed once.

On the poll path the answer's data is not turned into a list of registers and packed again: `samples` takes
the bytes as they came (registers big-endian, which is the "big" block; the "swapped" one is made from it
only when a point needs it) and makes the read's `Sample`s directly, with each point's name and measurement
bound when the plan was made. Coils and discrete inputs have `BitReadDecoder`: each point's byte and bit of
the packed answer, found once.

The result is the same as `codec.decode` for every register content: tests/drivers/test_modbus_decodeplan.py
compares both over every shipped profile and every data type, order and scaling.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import eq
from typing import Any

from dcim.core.samples import Quality, Sample, Value
from dcim.drivers.modbus import codec
from dcim.drivers.modbus.plan import Read
from dcim.drivers.modbus.points import Point

# Raw struct codes of each type (the bit of a flag is taken from the whole unsigned word or words).
_CODE: dict[str, str] = {
    "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
    "float32": "f", "float64": "d", "bool": "H",
}
_UNSIGNED_CODE: dict[int, str] = {1: "H", 2: "I", 4: "Q"}

# How the value after the raw number is computed.
_PLAIN, _PLAIN_FLOAT32, _PLAIN_FLOAT64, _SCALED, _DECIMAL, _BIT, _ENUM, _GENERAL = range(8)

# A 16-bit integer in tenths, hundredths or thousandths (no offset): codec's raw x scale, rounded to the
# scale's digits + 6, is exactly raw / 10**k (the product is within an ulp of the quotient, far inside the
# rounding step, and division by 10**k is correctly rounded); a division costs a twentieth of `round`.
# tests/drivers/test_modbus_decodeplan.py checks every 16-bit raw value for each.
_DECIMAL_DIVISOR: dict[float, int] = {0.1: 10, 0.01: 100, 0.001: 1000}

# One decoded point: (point, value or None for "missing", reason when it could not be decoded).
Decoded = tuple[Point, Value | None, str]


@dataclass(frozen=True, slots=True)
class _Finish:
    point: Point
    index: int  # the point's place in the read, so results keep the profile's order
    kind: int
    scale: float
    offset: float
    digits: int  # for _SCALED: codec._tidy's rounding, precomputed; for _DECIMAL: the divisor
    bit: int  # for _BIT
    enum: Mapping[int, str] | None  # for _ENUM


class _Bad:
    """A point of the read that decodes to no reading, with the reason (in `_values`' results)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _finish_for(point: Point, index: int) -> _Finish:
    digits = 0
    if point.bit is not None:
        kind = _BIT  # codec.from_raw looks at nothing else for a flag
    elif point.missing:
        kind = _GENERAL
    elif point.enum is not None:
        # The raw number of an integer type is an int: a known code is its state; the rest say why not.
        kind = _GENERAL if point.type in ("float32", "float64") else _ENUM
    elif point.scale == 1.0 and point.offset == 0.0:
        kind = {"float32": _PLAIN_FLOAT32, "float64": _PLAIN_FLOAT64}.get(point.type, _PLAIN)
    elif point.offset == 0.0 and point.type in ("int16", "uint16") and point.scale in _DECIMAL_DIVISOR:
        kind = _DECIMAL
        digits = _DECIMAL_DIVISOR[point.scale]
    elif point.scale != 0 and point.type != "float32":
        # float32 points with a scale keep the general path: their raw value is the shortest text first.
        kind = _SCALED
        digits = min(max(0, -math.floor(math.log10(abs(point.scale)))) + 6, 15)
    else:
        kind = _GENERAL
    return _Finish(point, index, kind, point.scale, point.offset, digits, point.bit or 0, point.enum)


@dataclass(frozen=True, slots=True)
class _Group:
    swapped: bool
    unpack: struct.Struct
    offset: int  # bytes from the start of the read
    finishes: tuple[_Finish, ...]
    # Every point of the group a plain float32 (a meter's or a PDU's readings): its values are then
    # finished in a loop of their own, without asking each point's kind.
    plain_float32: bool = False
    indexes: tuple[int, ...] = ()  # each finish's index, for that loop
    # For that loop: "%.7g" once per point, comma-separated (the group's texts in one formatting), and a
    # struct of as many native float32 (their values rounded to float32 in one call).
    fmt7: str = ""
    floats: struct.Struct | None = None


class ReadDecoder:
    """The decode plan of one register read (holding or input); `measurements` (point name -> measurement)
    for `samples`."""

    def __init__(self, read: Read, measurements: Mapping[str, str] | None = None) -> None:
        self.read = read
        self.count = read.count
        self.size = 2 * read.count  # bytes of a whole answer
        self._names = tuple(p.name for p in read.points)
        self._measurements = tuple((measurements or {}).get(p.name, "") for p in read.points)
        self._big = struct.Struct(f">{read.count}H")
        self._swapped = struct.Struct(f"<{read.count}H")
        groups: list[_Group] = []
        # (swapped, endian) -> members (offset, point), to be split into non-overlapping runs.
        by_layout: dict[tuple[bool, str], list[tuple[int, Point]]] = {}
        index = {id(point): i for i, point in enumerate(read.points)}
        for point in read.points:
            swapped = (point.byte_order == "little") != (point.word_order == "little")
            endian = "<" if point.word_order == "little" else ">"
            by_layout.setdefault((swapped, endian), []).append((2 * (point.address - read.address), point))
        for (swapped, endian), members in by_layout.items():
            members.sort(key=lambda m: m[0])
            runs: list[list[tuple[int, Point]]] = []
            ends: list[int] = []
            for offset, point in members:
                size = 2 * point.count
                # The first run this point does not overlap; else a new one.
                for i, end in enumerate(ends):
                    if offset >= end:
                        runs[i].append((offset, point))
                        ends[i] = offset + size
                        break
                else:
                    runs.append([(offset, point)])
                    ends.append(offset + size)
            for run in runs:
                start = run[0][0]
                fmt, at = endian, start
                for offset, point in run:
                    if offset > at:
                        fmt += f"{offset - at}x"
                    code = _UNSIGNED_CODE[point.count] if point.bit is not None else _CODE[point.type]
                    fmt += code
                    at = offset + 2 * point.count
                finishes = tuple(_finish_for(p, index[id(p)]) for _, p in run)
                plain = all(f.kind == _PLAIN_FLOAT32 for f in finishes)
                groups.append(_Group(swapped, struct.Struct(fmt), start, finishes, plain,
                                     tuple(f.index for f in finishes),
                                     ",".join([_G7] * len(finishes)) if plain else "",
                                     struct.Struct(f"{len(finishes)}f") if plain else None))
        self._groups = tuple(groups)
        self._needs_swapped = any(g.swapped for g in groups)
        self._plain_float32 = all(g.plain_float32 for g in groups)
        # The texts of a read without plain float32 points: none is ever written, one list serves every poll.
        self._no_texts = [] if any(g.plain_float32 for g in groups) else [""] * len(self._names)

    def decode(self, registers: Sequence[int]) -> list[Decoded]:
        """Every point of the read, in the plan's order: (point, value, "") or (point, None, reason)."""
        try:
            big = self._big.pack(*registers)
        except struct.error:
            # Not 16-bit register values: the codec says per point what is wrong.
            return [_decode_one(p, registers, self.read) for p in self.read.points]
        return [(point, None, value.reason) if type(value) is _Bad else (point, value, "")
                for point, value in zip(self.read.points, self._values(big)[0], strict=True)]

    def samples(self, data: bytes, device: str, ts_ns: int, out: list[Sample]) -> bool:
        """The read's samples from its answer's data (`len(data) == self.size`, registers big-endian), appended
        to `out` in the plan's order: GOOD with the value, BAD with the reason, none for a missing value.
        True when they are laid out as `layout` says: every point of the read GOOD with a value."""
        good, bad = Quality.GOOD, Quality.BAD
        values, texts, plain = self._values(data)
        if plain:
            # Every point a value (a meter's floats): the samples made without a test a point.
            out += map(Sample, repeat(device), self._names, values, repeat(ts_ns), repeat(good), repeat(""),
                       self._measurements, repeat(()), texts)
            return True
        laid = True
        # The four have the plan's length by construction: `strict` (a keyword argument, parsed on every
        # call) is left out of the zips of the poll's path.
        for name, measurement, value, text in zip(self._names, self._measurements, values, texts):  # noqa: B905
            if value is None:
                laid = False
                continue
            if type(value) is _Bad:
                laid = False
                out.append(Sample(device, name, None, ts_ns, bad, value.reason, measurement))
            else:
                out.append(Sample(device, name, value, ts_ns, good, "", measurement, (), text))
        return laid

    @property
    def layout(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(points, measurements) of the read's samples when `samples` says they are laid out, in order."""
        return self._names, self._measurements

    @property
    def texts(self) -> bool:
        """Whether the read's values come with their line protocol texts when laid out (its plain float32s)."""
        return self._plain_float32

    def _values(self, big: bytes) -> tuple[list[Any], list[str], bool]:
        """Each point's value (None: missing; a `_Bad`: no reading, with the reason), from the big block;
        each point's line protocol text, for the values that come with one (plain float32 points: their
        shortest digits), else ""; and True when every point is a plain float32 and finite (a value each,
        none missing or bad)."""
        plain = self._plain_float32
        texts = self._no_texts or [""] * len(self._names)
        swapped = b""
        if self._needs_swapped:
            swapped = self._swapped.pack(*self._big.unpack(big))
        out: list[Any] = [None] * len(self._names)
        for group in self._groups:
            raws = group.unpack.unpack_from(swapped if group.swapped else big, group.offset)
            if group.plain_float32:
                total = sum(raws)
                if total - total == 0.0:  # all finite (float32 values cannot add up past a float64's range)
                    if _native_shortest_float32s is not None:
                        _native_shortest_float32s(raws, group.indexes, out, texts)
                        continue
                    assert group.floats is not None
                    _shortest_float32s(raws, group.indexes, group.fmt7, group.floats, out, texts)
                    continue
                plain = False
                for index, raw, finish in zip(group.indexes, raws, group.finishes):  # noqa: B905 - as below
                    # Finite: the shortest text's value. NaN or infinity: the codec's word on it.
                    out[index] = _finish_float32(raw) if raw - raw == 0.0 else _general(finish, raw)
                continue
            for finish, raw in zip(group.finishes, raws):  # noqa: B905 - one struct code a finish
                kind = finish.kind
                if kind == _DECIMAL:
                    out[finish.index] = raw / finish.digits
                    continue
                if kind == _SCALED:
                    value = raw * finish.scale + finish.offset
                    if value - value == 0.0:  # finite (integers times a finite scale never overflow)
                        out[finish.index] = round(float(value), finish.digits)
                        continue
                elif kind == _BIT:
                    out[finish.index] = raw >> finish.bit & 1 == 1
                    continue
                elif kind == _PLAIN:
                    out[finish.index] = raw
                    continue
                elif kind == _PLAIN_FLOAT32:
                    if raw - raw == 0.0:  # finite
                        out[finish.index] = _finish_float32(raw)
                        continue
                elif kind == _PLAIN_FLOAT64:
                    if raw - raw == 0.0:
                        out[finish.index] = raw
                        continue
                elif kind == _ENUM:
                    assert finish.enum is not None
                    state = finish.enum.get(raw)
                    if state is not None:
                        out[finish.index] = state
                        continue
                out[finish.index] = _general(finish, raw)
        return out, texts, plain


def _general(finish: _Finish, raw: Any) -> Any:
    """A point's value by `codec.from_raw` (what the inline cases do not cover), or a `_Bad` with the reason."""
    point = finish.point
    try:
        if point.type == "float32" and point.bit is None:
            raw = _finish_float32(raw)
        return codec.from_raw(point, raw)
    except codec.DecodeError as err:
        return _Bad(str(err))
    except (ValueError, ArithmeticError) as err:
        # The codec's contract is DecodeError; a gap in it must cost one point, not the poll.
        return _Bad(f"{point.name}: cannot decode: {err}")


class BitReadDecoder:
    """The decode plan of one coil or discrete-input read: each point's byte and bit in the packed answer."""

    def __init__(self, read: Read, measurements: Mapping[str, str] | None = None) -> None:
        self.read = read
        self._points = tuple(
            (p, (p.address - read.address) >> 3, (p.address - read.address) & 7, p.name,
             (measurements or {}).get(p.name, ""))
            for p in read.points)

    @property
    def layout(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(points, measurements) of the read's samples when `samples` says they are laid out, in order."""
        return tuple(p[3] for p in self._points), tuple(p[4] for p in self._points)

    texts = False  # flags carry no text (`ReadDecoder.texts`)

    def samples(self, data: bytes, device: str, ts_ns: int, out: list[Sample]) -> bool:
        """The read's samples from its answer's data (at least `read.count` bits), appended to `out`. True
        when every point is GOOD with a value (`ReadDecoder.samples`)."""
        good = Quality.GOOD
        laid = True
        for point, byte, shift, name, measurement in self._points:
            bit = data[byte] >> shift & 1 == 1
            if point.enum is None:
                out.append(Sample(device, name, bit, ts_ns, good, "", measurement))
                continue
            try:
                value = codec.decode_bit(point, bit)
            except codec.DecodeError as err:
                out.append(Sample(device, name, None, ts_ns, Quality.BAD, str(err), measurement))
                laid = False
                continue
            except (ValueError, ArithmeticError, struct.error) as err:
                out.append(Sample(device, name, None, ts_ns, Quality.BAD, f"{name}: cannot decode: {err}",
                                  measurement))
                laid = False
                continue
            if value is not None:
                out.append(Sample(device, name, value, ts_ns, good, "", measurement))
            else:
                laid = False
        return laid


_F32 = struct.Struct(">f")
# `_shortest_float32s` and `_shortest_float32` in C (_float32.c: the same values and texts, about 4 us a group
# of 20 meter values against 13 under timeit), where the install built it; setup.py leaves it out where no
# compiler is found.
try:
    from dcim.drivers.modbus._float32 import shortest_float32 as _native_shortest_float32
    from dcim.drivers.modbus._float32 import shortest_float32s as _native_shortest_float32s
except ImportError:  # pragma: no cover - every install the tests make builds it
    _native_shortest_float32 = _native_shortest_float32s = None
# The smallest positive normal float32: below it float32 values are evenly spaced (2 ** -149 apart).
_F32_MIN_NORMAL = 2.0 ** -126
# 6 to 9 significant digits: `%` with a format made once (an f-string spec costs more here, 0.03 us a value).
_G6, _G7, _G8, _G9 = "%.6g", "%.7g", "%.8g", "%.9g"


def _shortest_float32(value: float) -> float:
    """codec._shortest_float32 from the unpacked value (the same float32 bytes packed again): the first of
    its roundings to 6, 7, 8 and 9 significant digits that is the same float32, found in fewer tries.

    A meter's full-precision float (230.41718) takes 7 or 8 digits, a rounded value (230.42) 6 or fewer;
    the codec tries 6, 7, 8 in turn (about 2.7 tries a meter value), this tries 7 first:
    - If 7 digits are the same float32 and their text is at most 6 characters, it has at most 6 significant
      digits (`%g` drops trailing zeros), so rounding to 6 digits gives the same number: the codec's answer.
    - If 7 digits are the same float32, the text starts with a digit from 1 to 7 and the value is a normal
      float32 (positive: a sign or a leading 0 takes the next rule): either the text has at most 6
      significant digits (rounding to 6 gives the same number), or it has 7 and rounding to 6 is another
      point of the 7-digit grid, which cannot be the same float32 as well. The grid's step is 1e-6 of the
      value's leading digits (m, 1 <= m < 8 here) times its power of ten, the float32 interval about the
      value is at most 2 ** -23 of the value wide, and 2 ** -23 * m < 1e-6 while m < 8.39: the interval
      holds at most one point of the grid. (Below the smallest normal float32 the interval is wider than
      that: there the 6-digit rounding can be the same float32 too.)
    - Otherwise 6 digits are tried too.
    - If 7 digits are not, 6 are not either: the rounding to 7 digits is at least as near the value as the
      one to 6 (the 6-digit grid is part of the 7-digit one), and the float32's interval is symmetric about
      it except at a power of two. tests/drivers/test_modbus_decodeplan.py compares the two over every power
      of two and its neighbours (they agree) and a sample of the other float32 values; bench/f32_shortest.c
      compares them on every finite one.
    - 9 digits are always the same float32.
    Under timeit, about 0.62 us a meter value (0.64 without the leading-digit rule, 0.80 in the codec's
    order; about a quarter of a meter's values take 7 digits, most of the rest 8); a rounded one 0.34 us."""
    if value - value != 0.0:
        return value
    pack = _F32.pack
    data = pack(value)
    text = _G7 % value
    candidate = float(text)
    if pack(candidate) == data:
        if len(text) <= 6:
            return candidate
        first = text[0]
        if "1" <= first <= "7" and value >= _F32_MIN_NORMAL:
            return candidate
        shorter = float(_G6 % value)
        return shorter if pack(shorter) == data else candidate
    candidate = float(_G8 % value)
    if pack(candidate) == data:
        return candidate
    candidate = float(_G9 % value)
    return candidate if pack(candidate) == data else value


# What finishes a float32 point read among others (`_shortest_float32`, in C where it is built).
_finish_float32: Callable[[float], float] = _native_shortest_float32 or _shortest_float32


def _shortest_float32s(raws: tuple[float, ...], indexes: tuple[int, ...], fmt7: str, floats: struct.Struct,
                       out: list[Any], texts: list[str]) -> None:
    """`_shortest_float32` of each of a group's finite `raws`, into `out` at `indexes`, with its line protocol
    text (its `repr`) into `texts`: the same tries, each value's 7-digit try made for the whole group at once
    (one formatting, one rounding to float32 of all of them; about 1.5 us less a 20-value group under timeit).
    The 6-, 8- and 9-digit tries are `_shortest_float32`'s written out, not called (a call a value on the
    poll's path): tests/drivers/test_modbus_decodeplan.py compares the two over about 226,000 patterns.

    The text of `%.Ng` is the repr of its value wherever both write the number without an exponent: a decimal
    of at most 15 significant digits is the one such decimal of its float64, so `repr` finds the same digits
    (`%g` drops trailing zeros, `repr` keeps one after the point: "230" is "230.0"). With an exponent (from
    10 ** N up, or below 1e-4), the text stays empty and the encoder formats the value as before."""
    texts7 = (fmt7 % raws).split(",")
    values = list(map(float, texts7))
    pack = _F32.pack
    for index, raw, text, value, same in zip(indexes, raws, texts7, values,  # noqa: B905 - one of each a point
                                             map(eq, floats.unpack(floats.pack(*values)), raws)):
        if same:
            # As `_shortest_float32`: 6 digits too, where they can be the same float32.
            if len(text) > 6 and not ("1" <= text[0] <= "7" and raw >= _F32_MIN_NORMAL):
                shorter = _G6 % raw
                candidate = float(shorter)
                if pack(candidate) == pack(raw):
                    text, value = shorter, candidate
        else:
            data = pack(raw)
            text = _G8 % raw
            value = float(text)
            if pack(value) != data:
                text = _G9 % raw
                value = float(text)
                if pack(value) != data:
                    text, value = "", raw  # not reached: 9 digits are always the same float32
        out[index] = value
        if "e" not in text:
            texts[index] = text if "." in text else text + ".0"


def _decode_one(point: Point, registers: Sequence[int], read: Read) -> Decoded:
    try:
        return point, codec.decode(point, [int(r) for r in read.slice(list(registers), point)]), ""
    except codec.DecodeError as err:
        return point, None, str(err)
    except (ValueError, ArithmeticError, struct.error) as err:
        return point, None, f"{point.name}: cannot decode: {err}"
