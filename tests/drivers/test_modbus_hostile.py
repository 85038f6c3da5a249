"""The Modbus driver against hostile devices: TCP servers written here, talking to the real driver.

One server streams random bytes at whoever connects (pymodbus' client, on the poll path until it was
replaced by dcim's own Modbus TCP client, appended hex dumps of the last frames to each of its errors:
unbounded, that was 80 MB of log a minute); another answers well-formed frames whose registers
hold values that are no reading (NaN, infinity, a float64 that overflows once scaled). The driver gives BAD
samples with reasons or DriverErrors, never another exception, and the log stays within a bound counted in
bytes, however many polls the garbage lasts.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from dcim.core import logs
from dcim.core.samples import Quality
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import DriverError
from dcim.drivers.modbus import codec
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.modbus.driver import ModbusDriver
from dcim.drivers.modbus.points import Point
from dcim.drivers.profiles import Profile

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]


def profile(*points: Point) -> Profile[Point]:
    return Profile[Point](name="hostile-cdu", kind="cdu", protocol="modbus", points=list(points))


def device(port: int, **extra: Any) -> ModbusDevice:
    fields: dict[str, Any] = {"id": "evil-cdu", "kind": "cdu", "protocol": "modbus", "profile": "hostile-cdu",
                              "host": "127.0.0.1", "port": port, "timeout": 0.3, "retries": 0}
    return ModbusDevice.model_validate({**fields, **extra})


SUPPLY = Point(name="supply_temp_c", table="holding", address=0, type="uint16", scale=0.1)


# ---- garbage on the wire, and the log -------------------------------------------------------------------------

async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """For every request, two frames of random bytes (seeded: the same garbage every run): one behind a
    plausible MBAP header with another transaction id, one with a random protocol id. Each makes pymodbus
    log an error, a different one each time (so its own repeat filter lets them all through), with the hex of
    the last frames appended. (Together under pymodbus' 516-byte receive buffer, which it empties silently.)"""
    rng = random.Random(1234)
    while True:
        request = await reader.read(260)
        if not request:
            return
        for n in (1, 0):
            body = rng.randbytes(rng.randrange(20, 200))
            if n % 2:
                header = struct.pack(">HHHB", rng.randrange(65536), 0, len(body) + 1, 1)
            else:
                header = struct.pack(">HHHB", rng.randrange(65536), rng.randrange(1, 65536), len(body) + 1, 1)
            writer.write(header + body)
            await writer.drain()


@pytest.fixture
def captured_log() -> Iterator[tuple[io.StringIO, logs.RateLimit]]:
    """The daemon's logging set up onto a buffer (JSON, as under systemd), a frozen clock for the rate
    limit's windows; the previous configuration restored afterwards."""
    root = logging.getLogger()
    saved = (structlog.get_config(), list(root.handlers), root.level,
             {name: logging.getLogger(name).level for name in logs.LIBRARIES})
    buffer = io.StringIO()
    limit = logs.setup_logging("info", "json", stream=buffer)
    limit.clock = lambda: 0.0  # one window, whatever the test's wall time: the bound is in bytes, not seconds
    try:
        yield buffer, limit
    finally:
        config, handlers, level, levels = saved
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lib_level in levels.items():
            logging.getLogger(name).setLevel(lib_level)


@pytest.mark.parametrize("polls", [5, 40])
async def test_a_device_streaming_garbage_keeps_the_log_bounded(
    tcp_server: Callable[[Handler], Any], captured_log: tuple[io.StringIO, logs.RateLimit], polls: int,
) -> None:
    buffer, _limit = captured_log
    port = await tcp_server(garbage)
    driver = ModbusDriver(device(port), profile(SUPPLY), DriverContext())
    outcomes: list[str] = []
    try:
        for _ in range(polls):
            try:
                samples = await driver.read()
            except DriverError as err:
                outcomes.append(type(err).__name__)
            else:
                outcomes.append("bad" if all(s.quality is Quality.BAD for s in samples) else "good?")
    finally:
        await driver.close()
    assert "good?" not in outcomes
    written = len(buffer.getvalue().encode())
    # The bound: a few templates x LIBRARY_BURST records x MAX_MESSAGE characters (and their JSON), the same
    # for 5 polls and for 40. When pymodbus' client was on the poll path, each of its errors carried kilobytes
    # of hex and only the rate limit held it (the limit itself: the next test); the poll path's own client
    # logs nothing per bad frame.
    assert written <= 16 * 1024, buffer.getvalue()[-2000:]
    for line in buffer.getvalue().splitlines():
        assert len(line) < logs.MAX_MESSAGE + 400


def test_rate_limit_passes_a_burst_per_template_and_reports_the_drop() -> None:
    now = [0.0]
    limit = logs.RateLimit(burst=2, window=60.0, clock=lambda: now[0])

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("pymodbus.logging", logging.ERROR, __file__, 1, text, None, None)

    passed = [limit.filter(record(f"Processing: 0x{n:04x} {n:02x} ff 00 frame {n}")) for n in range(10)]
    assert passed == [True, True] + [False] * 8
    assert limit.filter(record("another template entirely"))
    now[0] = 61.0
    first = record("Processing: 0x0001 01 ff 00 frame 1")
    assert limit.filter(first)
    assert getattr(first, "dcim_suppressed", 0) == 8


def test_messages_are_truncated_with_the_count() -> None:
    text = logs.truncate("ab" * 1000, 100)
    assert text.startswith("ab" * 50) and text.endswith("(1900 more chars)")


def test_the_template_memory_is_bounded() -> None:
    limit = logs.RateLimit(burst=1, max_templates=8, clock=lambda: 0.0)
    for n in range(100):
        limit.filter(logging.LogRecord("x", logging.ERROR, __file__, 1, f"message kind {'abcdefghij'[n % 10]}"
                                       f"{'klmnopqrst'[n // 10]}", None, None))
    assert len(limit._windows) <= 8


# ---- well-formed frames, values that are no reading ------------------------------------------------------------

def holding_server(registers: list[int]) -> Handler:
    """A Modbus TCP server answering function 3 from `registers` (the register image, from address 0)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            header = await reader.readexactly(7)
            tid, _pid, length, unit = struct.unpack(">HHHB", header)
            body = await reader.readexactly(length - 1)
            function, address, count = struct.unpack(">BHH", body[:5])
            words = registers[address:address + count]
            payload = struct.pack(">BB", function, 2 * len(words)) + b"".join(struct.pack(">H", w) for w in words)
            writer.write(struct.pack(">HHHB", tid, 0, len(payload) + 1, unit) + payload)
            await writer.drain()
    return serve


def words(fmt: str, value: float) -> list[int]:
    data = struct.pack(fmt, value)
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


async def test_registers_that_are_no_reading_are_bad_samples(tcp_server: Callable[[Handler], Any]) -> None:
    image = (words(">d", 1.5e308) + words(">f", float("nan")) + words(">f", float("inf"))
             + words(">d", 21.5) + [0xFFFF])
    port = await tcp_server(holding_server(image))
    points = [
        Point(name="flow_lpm", table="holding", address=0, type="float64", scale=10.0),  # overflows to inf
        Point(name="supply_temp_c", table="holding", address=4, type="float32"),
        Point(name="return_temp_c", table="holding", address=6, type="float32"),
        Point(name="leaving_temp_c", table="holding", address=8, type="float64"),
        Point(name="pump_speed_pct", table="holding", address=12, type="uint16", enum={0: "off", 1: "on"}),
    ]
    driver = ModbusDriver(device(port), profile(*points), DriverContext())
    try:
        samples = {s.point: s for s in await driver.read()}
    finally:
        await driver.close()
    assert samples["leaving_temp_c"].quality is Quality.GOOD and samples["leaving_temp_c"].value == 21.5
    assert "not a finite number" in samples["flow_lpm"].reason
    assert "nan" in samples["supply_temp_c"].reason
    assert "inf" in samples["return_temp_c"].reason
    assert "unknown code 65535" in samples["pump_speed_pct"].reason
    for name in ("flow_lpm", "supply_temp_c", "return_temp_c", "pump_speed_pct"):
        assert samples[name].quality is Quality.BAD and samples[name].value is None


def test_decode_never_raises_anything_but_decode_error() -> None:
    rng = random.Random(99)
    kinds = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
    for n in range(2000):
        kind = kinds[n % len(kinds)]
        point = Point(name="flow_lpm", table="holding", address=0, type=kind,
                      scale=rng.choice([1.0, 0.1, 1e300, -1e300, 1e-300]), offset=rng.choice([0.0, 1e308]),
                      word_order=rng.choice(["big", "little"]), byte_order=rng.choice(["big", "little"]))
        count = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}.get(kind, 4)
        try:
            value = codec.decode(point, [rng.randrange(65536) for _ in range(count)])
        except codec.DecodeError:
            continue
        assert value is None or isinstance(value, str | bool) or abs(float(value)) < float("inf")
