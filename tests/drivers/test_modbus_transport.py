"""dcim's Modbus TCP client (dcim/drivers/modbus/transport.py) against servers written here.

Answers are matched to requests by transaction id, so several requests can be on one socket at once and come
back in any order; a late answer to a request given up on is ignored; an answer of the wrong function, with a
byte count that does not match its frame, or with a frame that is not Modbus fails its request (the last one
also drops the socket, which is out of step); a lost connection fails every request in flight. Through
`ModbusConnection`, `max_in_flight` bounds how many requests are on the wire at once.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from pymodbus.exceptions import ConnectionException, ModbusException

from dcim.drivers.base import DriverContext
from dcim.drivers.errors import BadResponse
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.modbus.connection import ModbusConnection
from dcim.drivers.modbus.driver import ModbusDriver
from dcim.drivers.modbus.points import Point
from dcim.drivers.modbus.transport import ModbusTcpClient
from dcim.drivers.profiles import Profile

MBAP = struct.Struct(">HHHB")


async def read_request(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(transaction id, unit, PDU) of the next request."""
    tid, _protocol, length, unit = MBAP.unpack(await reader.readexactly(7))
    return tid, unit, await reader.readexactly(length - 1)


def registers_answer(tid: int, unit: int, values: list[int]) -> bytes:
    pdu = struct.pack(f">BB{len(values)}H", 3, 2 * len(values), *values)
    return MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu


async def test_requests_in_flight_together_are_answered_out_of_order(tcp_server: Any) -> None:
    async def reversed_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Take four requests before answering any, then answer the last first: each register holds the
        # address asked for, so a mix-up shows.
        requests = [await read_request(reader) for _ in range(4)]
        for tid, unit, pdu in reversed(requests):
            _function, address, count = struct.unpack(">BHH", pdu)
            writer.write(registers_answer(tid, unit, [address + i for i in range(count)]))
        await writer.drain()
        await reader.read()

    client = ModbusTcpClient("127.0.0.1", await tcp_server(reversed_answers))
    assert await client.connect()
    try:
        answers = await asyncio.gather(*(
            client.read_holding_registers(address, count=2, device_id=1) for address in (0, 100, 200, 300)))
    finally:
        client.close()
    assert [a.registers for a in answers] == [[0, 1], [100, 101], [200, 201], [300, 301]]


async def test_a_late_answer_is_ignored(tcp_server: Any) -> None:
    async def late_then_right(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tid, unit, _pdu = await read_request(reader)
        writer.write(registers_answer((tid + 500) % 65536, unit, [666]))  # an answer nobody waits for
        writer.write(registers_answer(tid, unit, [42]))
        await writer.drain()
        await reader.read()

    client = ModbusTcpClient("127.0.0.1", await tcp_server(late_then_right))
    assert await client.connect()
    try:
        answer = await client.read_holding_registers(0, count=1, device_id=1)
    finally:
        client.close()
    assert answer.registers == [42]


@pytest.mark.parametrize(("pdu", "expected"), [
    (bytes([4, 2, 0, 1]), "function code 4"),          # the wrong function's answer
    (bytes([3, 4, 0, 1]), "byte count 4"),             # byte count beyond the frame
    (bytes([3, 3, 0, 1, 2]), "odd byte count"),        # half a register
    (bytes([0x83]), "exception answer of 1 bytes"),    # an exception answer without its code
])
async def test_a_malformed_answer_fails_its_request(tcp_server: Any, pdu: bytes, expected: str) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, _request = await read_request(reader)
            writer.write(MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)
            await writer.drain()

    client = ModbusTcpClient("127.0.0.1", await tcp_server(answer))
    assert await client.connect()
    try:
        with pytest.raises(ModbusException, match=expected):
            await client.read_holding_registers(0, count=1, device_id=1)
        assert client.connected  # the frame was whole: the stream is still in step
    finally:
        client.close()


async def test_an_exception_answer_carries_its_code(tcp_server: Any) -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tid, unit, _pdu = await read_request(reader)
        writer.write(MBAP.pack(tid, 0, 3, unit) + bytes([0x83, 6]))
        await writer.drain()
        await reader.read()

    client = ModbusTcpClient("127.0.0.1", await tcp_server(busy))
    assert await client.connect()
    try:
        answer = await client.read_holding_registers(0, count=1, device_id=1)
    finally:
        client.close()
    assert answer.isError() and answer.exception_code == 6


async def test_a_frame_that_is_not_modbus_drops_the_socket(tcp_server: Any) -> None:
    async def not_modbus(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tid, unit, _pdu = await read_request(reader)
        writer.write(MBAP.pack(tid, 7, 3, unit) + bytes([3, 0]))  # protocol id 7
        await writer.drain()
        await reader.read()

    client = ModbusTcpClient("127.0.0.1", await tcp_server(not_modbus))
    assert await client.connect()
    with pytest.raises(ValueError, match="bad MBAP header"):
        await client.read_holding_registers(0, count=1, device_id=1)
    assert not client.connected


async def test_a_lost_connection_fails_every_request_in_flight(tcp_server: Any) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            await read_request(reader)
        writer.close()

    client = ModbusTcpClient("127.0.0.1", await tcp_server(hang_up))
    assert await client.connect()
    results = await asyncio.gather(
        *(client.read_input_registers(a, count=1, device_id=1) for a in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionException) for r in results), results
    assert not client.connected


async def test_writes_are_framed_as_modbus_says(tcp_server: Any) -> None:
    seen: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, pdu = await read_request(reader)
            seen.append(pdu)
            writer.write(MBAP.pack(tid, 0, 6, unit) + pdu[:5])  # the echo: function, address, value/count
            await writer.drain()

    client = ModbusTcpClient("127.0.0.1", await tcp_server(echo))
    assert await client.connect()
    try:
        await client.write_register(10, 0xABCD, device_id=2)
        await client.write_registers(20, [1, 2], device_id=2)
        await client.write_coil(30, True, device_id=2)
    finally:
        client.close()
    assert seen == [bytes.fromhex("06000aabcd"), bytes.fromhex("100014000204") + bytes.fromhex("00010002"),
                    bytes.fromhex("05001eff00")]


@pytest.mark.parametrize("max_in_flight", [1, 3])
async def test_max_in_flight_bounds_the_requests_on_the_wire(tcp_server: Any, max_in_flight: int) -> None:
    outstanding = 0
    most = 0
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal outstanding, most

        async def answer(tid: int, unit: int) -> None:
            nonlocal outstanding
            await release.wait()
            outstanding -= 1
            writer.write(registers_answer(tid, unit, [7]))
            await writer.drain()

        tasks = []
        while True:
            tid, unit, _pdu = await read_request(reader)
            outstanding += 1
            most = max(most, outstanding)
            if most >= max_in_flight:
                release.set()
            tasks.append(asyncio.create_task(answer(tid, unit)))

    connection = ModbusConnection("127.0.0.1", await tcp_server(slow), max_in_flight=max_in_flight)
    try:
        answers = await asyncio.gather(*(
            connection.request(f"read {i}", lambda c: c.read_holding_registers(0, count=1, device_id=1),
                               timeout=30, retries=0)
            for i in range(6)))
    finally:
        await connection.close()
    assert [a.registers for a in answers] == [[7]] * 6
    assert most == max_in_flight


async def test_the_connection_turns_a_malformed_answer_into_a_bad_response(tcp_server: Any) -> None:
    async def wrong_function(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, _pdu = await read_request(reader)
            writer.write(MBAP.pack(tid, 0, 4, unit) + bytes([4, 1, 0]))
            await writer.drain()

    connection = ModbusConnection("127.0.0.1", await tcp_server(wrong_function))
    try:
        with pytest.raises(BadResponse, match="function code 4"):
            await connection.request("read", lambda c: c.read_holding_registers(0, count=1, device_id=1),
                                     timeout=30, retries=0)
    finally:
        await connection.close()


async def test_transaction_id_zero_is_the_answer_while_one_request_is_in_flight(tcp_server: Any) -> None:
    async def no_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _tid, unit, _pdu = await read_request(reader)
            writer.write(registers_answer(0, unit, [5]))
            await writer.drain()

    client = ModbusTcpClient("127.0.0.1", await tcp_server(no_echo))
    assert await client.connect()
    try:
        assert (await client.read_holding_registers(0, count=1, device_id=1)).registers == [5]
        assert (await client.read_holding_registers(0, count=1, device_id=1)).registers == [5]
    finally:
        client.close()


async def test_another_units_answer_is_ignored(tcp_server: Any) -> None:
    async def crosstalk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tid, unit, _pdu = await read_request(reader)
        writer.write(registers_answer(tid, unit + 1, [666]) + registers_answer(tid, unit, [7]))
        await writer.drain()
        await reader.read()

    client = ModbusTcpClient("127.0.0.1", await tcp_server(crosstalk))
    assert await client.connect()
    try:
        assert (await client.read_holding_registers(0, count=1, device_id=3)).registers == [7]
    finally:
        client.close()


@pytest.mark.parametrize("max_in_flight", [1, 4])
async def test_a_poll_sends_its_reads_together_when_the_device_takes_several(tcp_server: Any,
                                                                             max_in_flight: int) -> None:
    # Three points far apart (three reads); the server holds its answers until it has as many requests as the
    # device allows in flight, then answers the newest first.
    most = 0

    async def batching(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal most
        while True:
            held = [await read_request(reader)]
            while len(held) < min(max_in_flight, 3):
                held.append(await read_request(reader))
            most = max(most, len(held))
            for tid, unit, pdu in reversed(held):
                _function, address, count = struct.unpack(">BHH", pdu)
                writer.write(registers_answer(tid, unit, [address // 100 + 1] * count))
            await writer.drain()

    port = await tcp_server(batching)
    points = [Point(name=f"p{i}", table="holding", address=100 * i, type="uint16") for i in range(3)]
    device = ModbusDevice.model_validate({
        "id": "cdu-x", "kind": "cdu", "protocol": "modbus", "profile": "x", "host": "127.0.0.1", "port": port,
        "timeout": 30, "retries": 0, "max_gap": 0, "max_in_flight": max_in_flight})
    driver = ModbusDriver(device, Profile[Point](name="x", kind="cdu", protocol="modbus", points=points),
                          DriverContext())
    try:
        samples = await driver.read()
    finally:
        await driver.close()
    assert {s.point: s.value for s in samples} == {"p0": 1, "p1": 2, "p2": 3}
    assert most == min(max_in_flight, 3)
