"""Decode plans give what the codec gives, point for point, for every register content.

The plan (dcim/drivers/modbus/decodeplan.py) unpacks a read with a few precompiled structs; the codec
(`codec.decode`) is the reference, one point at a time. Compared over every shipped Modbus profile and over
a synthetic profile with every data type, word and byte order, scaling, missing markers, enums, bit flags
and values that are no reading (NaN, infinity, a scale that overflows), with register contents that are
random, extreme, or taken from floats that need each number of digits.
"""

from __future__ import annotations

import dataclasses
import math
import random
import struct
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from dcim.core.lineproto import encode_batch
from dcim.core.samples import Batch, Layout, Quality, Sample
from dcim.drivers.modbus import codec
from dcim.drivers.modbus.decodeplan import ReadDecoder
from dcim.drivers.modbus.plan import Read, plan_reads
from dcim.drivers.modbus.points import REGISTER_COUNT, Point
from dcim.drivers.profiles import available_profiles, load_profile

TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]
SCALES = [(1.0, 0.0), (0.1, 0.0), (0.01, -40.0), (10.0, 0.0), (1.0, 273.15), (1e300, 0.0), (0.0, 5.0)]


def reference(point: Point, registers: list[int], address: int) -> tuple[str, str]:
    words = registers[point.address - address : point.address - address + point.count]
    try:
        value = codec.decode(point, words)
    except codec.DecodeError as err:
        return "error", str(err)
    except (ValueError, ArithmeticError, struct.error) as err:
        return "error", f"{point.name}: cannot decode: {err}"
    return "value", repr(value)


def planned(decoded: tuple[Point, Any, str]) -> tuple[str, str]:
    _, value, reason = decoded
    return ("error", reason) if reason else ("value", repr(value))


def contents(count: int, rng: random.Random) -> list[list[int]]:
    """Register blocks: random, all zero, all ones, sign edges, float specials, short and long floats."""
    blocks = [[rng.randrange(65536) for _ in range(count)] for _ in range(40)]
    blocks += [[0] * count, [0xFFFF] * count, [0x7FFF] * count, [0x8000] * count]
    for words in ([0x7FC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000], [0x8000, 0x0000], [0x7FF8, 0x0000]):
        blocks.append((words * count)[:count])
    for value in (180.3, 22.4, 0.1, 1e-40, 3.4e38, -273.15, 1234567.0, 16777217.0, 1 / 3):
        raw = struct.pack(">f", value)
        words = [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]
        blocks.append((words * count)[:count])
        blocks.append([rng.choice(words) for _ in range(count)])
    return blocks


def register_reads(points: list[Point], max_gap: int, seed: int) -> Iterator[tuple[Read, ReadDecoder, list[int]]]:
    """Each register read of the points' plan, its decoder, and each register content of `contents` for it."""
    rng = random.Random(seed)
    for read in plan_reads(points, max_gap=max_gap):
        if read.table not in ("holding", "input"):
            continue
        decoder = ReadDecoder(read)
        for registers in contents(read.count, rng):
            yield read, decoder, registers


def check(points: list[Point], max_gap: int) -> int:
    compared = 0
    for read, decoder, registers in register_reads(points, max_gap, 12):
        got = decoder.decode(registers)
        assert [d[0] for d in got] == list(read.points), "the plan keeps the profile's order"
        for point, decoded in zip(read.points, got, strict=True):
            assert planned(decoded) == reference(point, registers, read.address), (point, registers)
            compared += 1
    return compared


MODBUS_PROFILES = [name for name in available_profiles() if load_profile(name).protocol == "modbus"]


def check_laid_out(points: list[Point], max_gap: int) -> int:
    """A read's `samples` says it is laid out exactly when every point of it is GOOD with a value, and then
    its samples are the decoder's `layout`, in order."""
    laid = 0
    for read, decoder, registers in register_reads(points, max_gap, 5):
        samples: list[Sample] = []
        got = decoder.samples(struct.pack(f">{read.count}H", *registers), "d-1", 1, samples)
        whole = len(samples) == len(read.points) and all(s.ok for s in samples)
        assert got is whole, (read, registers)
        if got:
            laid += 1
            assert (tuple(s.point for s in samples), tuple(s.measurement for s in samples)) == decoder.layout
    return laid


@pytest.mark.parametrize("name", MODBUS_PROFILES)
def test_a_read_is_laid_out_exactly_when_every_point_is_good(name: str) -> None:
    assert check_laid_out(list(load_profile(name).points), 0) > 0


@pytest.mark.parametrize("name", MODBUS_PROFILES)
@pytest.mark.parametrize("max_gap", [0, 8])
def test_every_shipped_profile_decodes_as_the_codec_does(name: str, max_gap: int) -> None:
    assert check(list(load_profile(name).points), max_gap) > 0


def synthetic() -> list[Point]:
    points: list[Point] = []
    address = 0
    for data_type in TYPES:
        for byte_order, word_order in ORDERS:
            for scale, offset in SCALES:
                points.append(Point(name=f"p{len(points)}", table="holding", address=address, type=data_type,
                                    byte_order=byte_order, word_order=word_order, scale=scale, offset=offset))
                address += REGISTER_COUNT[data_type]
            # Missing markers and enums on the same registers as the value before (reads overlap).
            back = address - REGISTER_COUNT[data_type]
            points.append(Point(name=f"p{len(points)}", table="holding", address=back, type=data_type,
                                byte_order=byte_order, word_order=word_order, missing=[0, 65535, -1]))
            points.append(Point(name=f"p{len(points)}", table="holding", address=back, type=data_type,
                                byte_order=byte_order, word_order=word_order, enum={0: "off", 1: "on", 2: "auto"}))
            for bit in (0, 7, 15, 16 * REGISTER_COUNT[data_type] - 1):
                points.append(Point(name=f"p{len(points)}", table="holding", address=back, type=data_type,
                                    byte_order=byte_order, word_order=word_order, bit=bit))
    return points


@pytest.mark.parametrize("max_gap", [0, 3])
def test_every_type_order_and_scaling_decodes_as_the_codec_does(max_gap: int) -> None:
    assert check(synthetic(), max_gap) > 10_000
    check_laid_out(synthetic(), max_gap)  # none is whole here: 34-162 points a read, markers and overflows among them


@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS)
def test_a_read_of_plain_float32_points_alone_decodes_as_the_codec_does(byte_order: str, word_order: str) -> None:
    # A meter's or a PDU's read: every point a plain float32. The plan finishes such a group in a loop of its
    # own; NaN and infinity (in `contents`) still go the codec's way, as no reading with the reason.
    points = [Point(name=f"f{i}", table="input", address=2 * i, type="float32", byte_order=byte_order,
                    word_order=word_order) for i in range(12)]
    (read,) = plan_reads(points, max_gap=0)
    assert [group.plain_float32 for group in ReadDecoder(read)._groups] == [True]
    assert check(points, 0) > 0


def test_registers_that_are_no_16_bit_words_decode_as_the_codec_does() -> None:
    points = [Point(name="a", table="input", address=0), Point(name="b", table="input", address=1, type="int32")]
    (read,) = plan_reads(points, max_gap=0)
    for registers in ([1, 70000, 2], [-1, 5, 6]):
        got = ReadDecoder(read).decode(registers)
        assert [planned(d) for d in got] == [reference(p, registers, 0) for p in points]


@pytest.mark.parametrize("scale", [0.1, 0.01, 0.001])
@pytest.mark.parametrize("data_type", ["int16", "uint16"])
def test_every_16_bit_value_in_tenths_hundredths_thousandths_decodes_as_the_codec_does(
        data_type: str, scale: float) -> None:
    # The plan divides by 10, 100 or 1000 where the codec multiplies and rounds: the same float, every time.
    points = [Point(name="t", table="input", address=0, type=data_type, scale=scale)]
    (read,) = plan_reads(points, max_gap=0)
    decoder = ReadDecoder(read)
    for word in range(65536):
        (got,) = decoder.decode([word])
        assert repr(got[1]) == repr(codec.decode(points[0], [word])), (data_type, scale, word)
        assert type(got[1]) is float


def _float32_patterns() -> list[int]:
    """Every power of two (the one place a float32's interval is not symmetric) with its neighbours, in
    every exponent and both signs (zeros and subnormals among them); the largest finite values; runs of
    values where both 7 and 6 digits may do; and a seeded sample of all the rest."""
    patterns = []
    for sign in (0, 1 << 31):
        for exponent in range(255):
            for step in range(-4, 5):
                bits = sign | exponent << 23
                if 0 <= bits + step <= 0xFFFFFFFF:
                    patterns.append(bits + step)
    # In binades where a float32's step is wider than 7 digits' (here [2^-20, 2^-19), [2^-10, 2^-9),
    # [2^33, 2^34) and [2^53, 2^54)), 7 digits and 6 may both be the same float32 without being the same
    # number (9.536921e-07 and 9.53692e-07): the first 3,000 values of each. Their leading digit is 8 or 9
    # (0.0009765625 is written with a leading 0), and below the smallest normal float32, any.
    for exponent in (-20, -10, 33, 53):
        patterns += [(exponent + 127) << 23 | mantissa for mantissa in range(3000)]
    patterns += [0x7F7FFFFF, 0xFF7FFFFF]  # the largest finite float32, both signs
    rng = random.Random(32)
    patterns += [rng.getrandbits(32) for _ in range(150_000)]
    # Full-precision values of a meter's magnitudes (7-9 digits), and rounded ones (6 or fewer).
    for _ in range(20_000):
        value = rng.uniform(-1000.0, 1000.0)
        for text in (repr(value), f"{value:.2f}", f"{value:.1e}"):
            patterns.append(int.from_bytes(struct.pack(">f", float(text)), "big"))
    return patterns


@pytest.mark.parametrize("way", ["C", "Python"])
def test_a_plain_float32_groups_values_are_the_shortest_and_their_texts_their_repr(
        way: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A group of plain float32 points is finished at once (`_shortest_float32s`, or the C module's
    # `shortest_float32s` where it is built): each value is the one `_shortest_float32` gives, and each sample
    # carries the line protocol's text of it, which is its repr (or nothing, where the shortest digits are
    # written with an exponent and the encoder formats the value). Both ways, over about 226,000 patterns.
    from dcim.drivers.modbus import decodeplan
    from dcim.drivers.modbus.decodeplan import _shortest_float32

    if way == "Python":
        monkeypatch.setattr(decodeplan, "_native_shortest_float32s", None)
    else:
        assert decodeplan._native_shortest_float32s is not None, NOT_BUILT

    points = [Point(name=f"f{i}", table="input", address=2 * i, type="float32") for i in range(20)]
    (read,) = plan_reads(points, max_gap=0)
    decoder = ReadDecoder(read)
    patterns = [bits for bits in _float32_patterns() if bits & 0x7F800000 != 0x7F800000]  # finite ones
    patterns += patterns[:20 - len(patterns) % 20]
    texts = between = 0
    for start in range(0, len(patterns), 20):
        data = struct.pack(">20I", *patterns[start:start + 20])
        samples: list[Sample] = []
        decoder.samples(data, "meter-1", 1, samples)
        assert [s.point for s in samples] == [p.name for p in points]
        for sample, raw in zip(samples, struct.unpack(">20f", data), strict=True):
            assert sample.quality is Quality.GOOD
            assert repr(sample.value) == repr(_shortest_float32(raw)), (raw, sample.value)
            # `%g` with 6 to 9 digits writes no exponent from 1e-4 up to 1e6 at the least (nor for 0).
            plain = raw == 0 or 1e-4 <= abs(raw) < 1e6
            between += plain
            if sample.text:
                texts += 1
                assert sample.text == repr(sample.value), (raw, sample.text)
            else:
                assert not plain, (raw, sample.value)
    assert texts >= between > 40_000


NOT_BUILT = ("the C module dcim.drivers.modbus._float32 is not built: setup.py builds it where a C compiler and "
             "Python's headers are found (Debian: gcc), at `make venv`")


def test_the_c_module_of_the_float32_digits_is_built() -> None:
    # Every install the tests make has a compiler; without one, dcim runs on the Python code (the same values),
    # and `dcim --version` says so.
    from dcim.drivers.modbus import decodeplan

    assert decodeplan._native_shortest_float32s is not None, NOT_BUILT


def test_the_c_module_refuses_wrong_arguments_with_an_error_not_a_crash() -> None:
    from dcim.drivers.modbus._float32 import shortest_float32, shortest_float32s  # type: ignore[import-not-found]

    out: list[Any] = [None] * 3
    texts = [""] * 3
    with pytest.raises(TypeError):
        shortest_float32s([1.5], (0,), out, texts)  # a list where the struct's tuple goes
    with pytest.raises(TypeError):
        shortest_float32s((1.5,), (0,), out)
    with pytest.raises(TypeError):
        shortest_float32s(("1.5",), (0,), out, texts)
    with pytest.raises(ValueError, match="differ in length"):
        shortest_float32s((1.5, 2.5), (0,), out, texts)
    with pytest.raises(IndexError):
        shortest_float32s((1.5, 2.5), (1, 3), out, texts)
    assert out == [None, 1.5, None] and texts == ["", "1.5", ""], "the values before the bad index are written"
    with pytest.raises(IndexError):
        shortest_float32s((1.5,), (-1,), out, texts)

    class Shrinks:  # a raw whose __float__ empties the list being written: an error, not a write past its end
        def __float__(self) -> float:
            out.clear()
            return 2.5

    with pytest.raises(IndexError):
        shortest_float32s((1.5, Shrinks(), 3.5), (0, 1, 2), out, texts)
    assert out == [] and texts == ["1.5", "1.5", ""]
    # Not finite (the plan never passes such a value): the value as it is, and no text.
    out, texts = [None] * 3, [""] * 3
    shortest_float32s((math.inf, 230.41717529296875, -math.inf), (0, 1, 2), out, texts)
    assert out == [math.inf, 230.41718, -math.inf] and texts == ["", "230.41718", ""]
    shortest_float32s((math.nan,), (0,), out, texts)
    assert math.isnan(out[0]) and texts[0] == ""
    with pytest.raises(TypeError):
        shortest_float32("1.5")  # one value: a float (or what has __float__), not its text
    assert shortest_float32(230.41717529296875) == 230.41718
    assert shortest_float32(-math.inf) == -math.inf and math.isnan(shortest_float32(math.nan))

    # Exponents: no text (the encoder formats the value); integers: ".0" added, as repr writes them.
    shortest_float32s((1e10, 3.0, 1.5e-5), (0, 1, 2), out, texts)
    assert out == [1e10, 3.0, 1.5e-5] and texts == ["", "3.0", ""]


def test_the_c_module_keeps_no_memory_from_a_call() -> None:
    # Each try's text is a buffer of Python's allocator, freed in C; tracemalloc sees that allocator. 20,000
    # calls of a 20-value group (and 20,000 of each value alone) would keep several MiB if one buffer a value
    # were not freed.
    import tracemalloc

    from dcim.drivers.modbus._float32 import shortest_float32, shortest_float32s  # type: ignore[import-not-found]

    rng = random.Random(5)
    raws = tuple(struct.unpack(">20f", struct.pack(">20f", *(rng.uniform(-1e3, 1e3) for _ in range(20)))))
    raws += (1e10, 3.0, math.inf)  # an exponent, an integer, a value that is not finite
    indexes = tuple(range(len(raws)))
    out: list[Any] = [None] * len(raws)
    texts = [""] * len(raws)
    for _ in range(100):
        shortest_float32s(raws, indexes, out, texts)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(20_000):
            shortest_float32s(raws, indexes, out, texts)
        for _ in range(20_000):
            for raw in raws:
                shortest_float32(raw)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 16_384, after - before


@pytest.mark.parametrize("special", [math.nan, math.inf, -math.inf])
def test_a_plain_float32_read_with_nan_or_infinity_in_it_has_that_point_bad_and_the_rest_good(
        special: float) -> None:
    # The samples of a read of plain float32 points are made without a test a point only when every one
    # of them is a finite value; a NaN or an infinity among them is that point's BAD sample, as the codec says.
    points = [Point(name=f"f{i}", table="input", address=2 * i, type="float32") for i in range(6)]
    (read,) = plan_reads(points, max_gap=0)
    values = [1.5, 230.41718, special, -0.25, 0.0, 50.0]
    registers = list(struct.unpack(">12H", struct.pack(">6f", *values)))
    samples: list[Sample] = []
    assert ReadDecoder(read).samples(struct.pack(">6f", *values), "meter-1", 7, samples) is False  # not laid out
    assert [s.point for s in samples] == [p.name for p in points]
    for sample, point in zip(samples, points, strict=True):
        kind, want = reference(point, registers, 0)
        if kind == "error":
            assert (sample.quality, sample.value, sample.reason) == (Quality.BAD, None, want)
        else:
            assert (sample.quality, repr(sample.value)) == (Quality.GOOD, want)
            assert sample.text in ("", want)  # such a read goes the way of each point alone: no text
    assert [s.quality for s in samples].count(Quality.BAD) == 1


def test_the_line_protocol_of_a_polls_samples_is_the_same_with_their_texts_or_without() -> None:
    points = [Point(name=f"f{i}", table="input", address=2 * i, type="float32") for i in range(20)]
    (read,) = plan_reads(points, max_gap=0)
    decoder = ReadDecoder(read)
    assert decoder.texts
    layout = Layout(*decoder.layout, texts=True)
    rng = random.Random(7)
    for _ in range(500):
        values = [rng.choice([rng.uniform(-1e3, 1e3), rng.uniform(-1e9, 1e9), rng.uniform(-1e-3, 1e-3),
                              round(rng.uniform(0, 500), 1), 0.0, -0.0, 12345678.0])
                  for _ in range(20)]
        samples: list[Sample] = []
        decoder.samples(struct.pack(">20f", *values), "meter-1", 1, samples)
        assert any(s.text for s in samples)
        without = [dataclasses.replace(s, text="") for s in samples]
        tags = (("site", "hall-1"),)
        want = encode_batch(Batch("meter-1", "pdu", 1, without), tags)
        assert encode_batch(Batch("meter-1", "pdu", 1, samples), tags) == want
        # Laid out (the driver's word, `Layout`): encoded from the layout's field names and the texts.
        assert encode_batch(Batch("meter-1", "pdu", 1, samples, layout), tags) == want
    assert layout.encodings


@pytest.mark.parametrize("way", ["C", "Python"])
def test_the_plans_shortest_float32_is_the_codecs(way: str) -> None:
    # The plan tries 7 digits first and skips what cannot be shorter; the codec tries 6, 7, 8, 9 in turn. For a
    # float32 point read with others the plan calls the C module's `shortest_float32` where it is built.
    from dcim.drivers.modbus import decodeplan

    if way == "C":
        assert decodeplan._native_shortest_float32 is not None, NOT_BUILT
        assert decodeplan._finish_float32 is decodeplan._native_shortest_float32
    shortest = decodeplan._native_shortest_float32 if way == "C" else decodeplan._shortest_float32
    lengths: Counter[int] = Counter()
    for bits in _float32_patterns():
        data = bits.to_bytes(4, "big")
        (value,) = struct.unpack(">f", data)
        got, want = shortest(value), codec._shortest_float32(data)
        assert repr(got) == repr(want), (hex(bits), value, got, want)
        if math.isfinite(want):
            lengths[max(6, len(repr(abs(want)).split("e")[0].replace(".", "").strip("0")))] += 1
    # Every outcome came up many times: 6 significant digits or fewer, 7, 8 and 9.
    assert all(lengths[n] > 100 for n in (6, 7, 8, 9)), lengths
