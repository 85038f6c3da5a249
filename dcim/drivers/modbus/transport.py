"""Modbus TCP on one socket: MBAP framing, requests matched to answers by transaction id, several in flight.

The client side of the poll path. pymodbus' client (3.x) runs one transaction at a time per connection, and
per request builds PDU objects, runs trace hooks, formats a debug line and waits through its own timers: at a
thousand devices that was the largest single share of the daemon's CPU. This module does only what a poll
needs: encode a request (12 bytes), match the answer by its transaction id, check it, and hand the
registers or bits back. Timeouts, retries, reconnects and backoff stay with `ModbusConnection`; the errors
raised are pymodbus' own exception types, so the connection's handling is the same for either client.

Answers are checked before anything is taken from them: the MBAP protocol id must be 0 and the length within
Modbus' 254-byte PDU (a stream out of step is dropped: the caller reconnects), the function code must be the
request's (or its exception form), and the byte count must match the frame. An answer whose transaction id
matches no request in flight (a late answer to a request that timed out) is ignored. The receive buffer
never holds more than one frame (at most 260 bytes).

The poll path (`ModbusConnection.read_plan`) uses the lower level: `send_reads` writes one or several read
requests in one `transport.write` and returns each one's future of its answer's PDU; `read_data` checks a PDU
and gives the data bytes as they came (the registers big-endian, or the packed bits), which the decode plans
unpack directly; `forget` gives up on a request. The `read_*` and `write_*` methods are the same on top.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import Protocol

from pymodbus.exceptions import ConnectionException, ModbusException

MBAP = struct.Struct(">HHHB")
READ = struct.Struct(">HHHBBHH")  # MBAP (7 bytes) + function, address, count
MAX_PDU = 253  # function code + data; the MBAP length counts the unit id too (<= 254)

READ_COILS = 1
READ_DISCRETE = 2
READ_HOLDING = 3
READ_INPUT = 4
WRITE_COIL = 5
WRITE_REGISTER = 6
WRITE_REGISTERS = 16


class Answer:
    """A device's answer, with the fields `ModbusConnection` and the driver read (as pymodbus' responses)."""

    __slots__ = ("bits", "exception_code", "function_code", "registers")

    def __init__(self, function_code: int, registers: list[int] | None = None, bits: list[bool] | None = None,
                 exception_code: int = 0) -> None:
        self.function_code = function_code
        self.registers: list[int] = registers or []
        self.bits: list[bool] = bits or []
        self.exception_code = exception_code

    def isError(self) -> bool:  # the name of pymodbus responses' method
        return self.exception_code != 0


def _bits(data: bytes) -> list[bool]:
    # Coils and discrete inputs come packed, least significant bit first.
    return [bool(byte >> i & 1) for byte in data for i in range(8)]


def decode_answer(function: int, pdu: bytes) -> Answer:
    """The answer to a request of `function`, from its PDU (function code first). Raises ModbusException."""
    code = pdu[0]
    if code == function | 0x80:
        if len(pdu) != 2:
            raise ModbusException(f"exception answer of {len(pdu)} bytes")
        return Answer(function, exception_code=pdu[1])
    if code != function:
        raise ModbusException(f"answer with function code {code} to a request of function code {function}")
    if function in (READ_HOLDING, READ_INPUT, READ_COILS, READ_DISCRETE):
        if len(pdu) < 2 or pdu[1] != len(pdu) - 2:
            raise ModbusException(f"byte count {pdu[1] if len(pdu) > 1 else None} in a {len(pdu)}-byte answer")
        data = pdu[2:]
        if function in (READ_COILS, READ_DISCRETE):
            return Answer(function, bits=_bits(data))
        if len(data) % 2:
            raise ModbusException(f"odd byte count {len(data)} for registers")
        return Answer(function, registers=list(struct.unpack(f">{len(data) // 2}H", data)))
    if len(pdu) != 5:
        raise ModbusException(f"write echo of {len(pdu)} bytes")
    return Answer(function)


def read_data(function: int, pdu: bytes) -> bytes | int:
    """The data of an answer to a read of `function` (registers big-endian as sent, or bits packed), or the
    exception code of an exception answer. Raises ModbusException (with `decode_answer`'s texts) for an
    answer that does not fit the request."""
    code = pdu[0]
    if code == function:
        size = len(pdu) - 2
        if size < 0 or pdu[1] != size:
            raise ModbusException(f"byte count {pdu[1] if len(pdu) > 1 else None} in a {len(pdu)}-byte answer")
        if size & 1 and function in (READ_HOLDING, READ_INPUT):
            raise ModbusException(f"odd byte count {size} for registers")
        return pdu[2:]
    if code == function | 0x80:
        if len(pdu) != 2:
            raise ModbusException(f"exception answer of {len(pdu)} bytes")
        return pdu[1]
    raise ModbusException(f"answer with function code {code} to a request of function code {function}")


class Receiver(Protocol):
    """What waits for an answer: a future of its PDU, or anything that takes the answer the same way (the
    connection's chain of one-by-one reads)."""

    def done(self) -> bool: ...

    def set_result(self, pdu: bytes, /) -> None: ...

    def set_exception(self, error: BaseException, /) -> None: ...


class ModbusTcpClient(asyncio.Protocol):
    """One TCP connection to a Modbus server or gateway; requests from any number of tasks at once."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        # transaction id -> (unit id, the receiver of the answer's PDU: a future, or a `Receiver`)
        self._pending: dict[int, tuple[int, Receiver]] = {}
        self._next_tid = 0

    # ---- connection --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def connect(self) -> bool:
        """True once connected; False if the server refused or could not be reached (no exception)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self, self.host, self.port)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(ConnectionException(f"{self.host}:{self.port}: connection closed"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._buffer.clear()
        self._fail(ConnectionException(f"{self.host}:{self.port}: connection lost"))

    def _fail(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for _function, future in pending.values():
            if not future.done():
                future.set_exception(error)

    # ---- receiving ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 7:
            tid, protocol, length, unit = MBAP.unpack_from(buffer)
            if protocol != 0 or not 2 <= length <= MAX_PDU + 1:
                # Not Modbus, or out of step: nothing after this can be trusted on this socket.
                error = ValueError(f"bad MBAP header (protocol id {protocol}, length {length})")
                self._fail(error)
                buffer.clear()
                if self._transport is not None:
                    self._transport.close()
                return
            end = 6 + length
            if length == 2 and len(buffer) == 9:
                end = 9  # an exception answer whose length field forgot its code (pymodbus takes it too)
            if len(buffer) < end:
                return
            pdu = bytes(buffer[7:end])
            del buffer[:end]
            entry = self._pending.get(tid)
            if entry is None and tid == 0 and len(self._pending) == 1:
                # Some devices answer with transaction id 0: unambiguous while one request is in flight.
                tid, entry = next(iter(self._pending.items()))
            if entry is None or (entry[0] and unit != entry[0]):
                # A late answer to a request given up on, or another unit's: ignored, as pymodbus does.
                continue
            del self._pending[tid]
            future = entry[1]
            if not future.done():
                # Checked by the waiting request (decode_answer): a bad answer fails that request only.
                future.set_result(pdu)

    # ---- requests ----------------------------------------------------------------------------------

    def _tid(self) -> int:
        for _ in range(65536):
            self._next_tid = self._next_tid % 0xFFFF + 1
            if self._next_tid not in self._pending:
                return self._next_tid
        raise ModbusException("65,535 requests in flight")

    def _begin(self, unit: int) -> tuple[asyncio.Transport, int, asyncio.Future[bytes]]:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionException(f"{self.host}:{self.port}: not connected")
        tid = self._tid()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[tid] = (unit, future)
        return transport, tid, future

    def send_read(self, unit: int, function: int, address: int, count: int) -> tuple[int, asyncio.Future[bytes]]:
        """`send_reads` of one request: its transaction id and the future of its answer's PDU."""
        transport, tid, future = self._begin(unit)
        transport.write(READ.pack(tid, 0, 6, unit, function, address, count))
        return tid, future

    def send_read_to(self, receiver: Receiver, unit: int, function: int, address: int, count: int) -> int:
        """`send_read` with the answer (or the connection's failure) handed to `receiver` instead of a new
        future, from the socket's callback; its transaction id. Raises ConnectionException."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionException(f"{self.host}:{self.port}: not connected")
        tid = self._tid()
        self._pending[tid] = (unit, receiver)
        transport.write(READ.pack(tid, 0, 6, unit, function, address, count))
        return tid

    def send_reads(self, unit: int, reads: Sequence[tuple[int, int, int]]) -> list[tuple[int, asyncio.Future[bytes]]]:
        """Write read requests `(function, address, count)` in one `transport.write`; (transaction id, future
        of the answer's PDU) of each, in order. The caller awaits each future and then `forget`s it. Raises
        ConnectionException if not connected."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionException(f"{self.host}:{self.port}: not connected")
        create_future = asyncio.get_running_loop().create_future
        pending = self._pending
        sent: list[tuple[int, asyncio.Future[bytes]]] = []
        frames = []
        for function, address, count in reads:
            tid = self._tid()
            future: asyncio.Future[bytes] = create_future()
            pending[tid] = (unit, future)
            sent.append((tid, future))
            frames.append(READ.pack(tid, 0, 6, unit, function, address, count))
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        return sent

    def forget(self, tid: int, future: Receiver) -> None:
        """The request's answer is no longer awaited (taken, timed out or abandoned): a late one is ignored."""
        entry = self._pending.get(tid)
        if entry is not None and entry[1] is future:
            del self._pending[tid]

    async def _answer(self, function: int, tid: int, future: asyncio.Future[bytes]) -> Answer:
        try:
            pdu = await future
        finally:
            entry = self._pending.get(tid)
            if entry is not None and entry[1] is future:
                del self._pending[tid]
        return decode_answer(function, pdu)

    async def _request(self, unit: int, function: int, body: bytes) -> Answer:
        transport, tid, future = self._begin(unit)
        transport.write(MBAP.pack(tid, 0, len(body) + 2, unit) + bytes((function,)) + body)
        return await self._answer(function, tid, future)

    async def _read(self, unit: int, function: int, address: int, count: int) -> Answer:
        transport, tid, future = self._begin(unit)
        transport.write(READ.pack(tid, 0, 6, unit, function, address, count))
        return await self._answer(function, tid, future)

    async def read_holding_registers(self, address: int, *, count: int, device_id: int) -> Answer:
        return await self._read(device_id, READ_HOLDING, address, count)

    async def read_input_registers(self, address: int, *, count: int, device_id: int) -> Answer:
        return await self._read(device_id, READ_INPUT, address, count)

    async def read_coils(self, address: int, *, count: int, device_id: int) -> Answer:
        return await self._read(device_id, READ_COILS, address, count)

    async def read_discrete_inputs(self, address: int, *, count: int, device_id: int) -> Answer:
        return await self._read(device_id, READ_DISCRETE, address, count)

    async def write_register(self, address: int, value: int, *, device_id: int) -> Answer:
        return await self._request(device_id, WRITE_REGISTER, struct.pack(">HH", address, value))

    async def write_registers(self, address: int, values: list[int], *, device_id: int) -> Answer:
        body = struct.pack(f">HHB{len(values)}H", address, len(values), 2 * len(values), *values)
        return await self._request(device_id, WRITE_REGISTERS, body)

    async def write_coil(self, address: int, value: bool, *, device_id: int) -> Answer:
        return await self._request(device_id, WRITE_COIL, struct.pack(">HH", address, 0xFF00 if value else 0))

    def __repr__(self) -> str:
        return f"ModbusTcpClient({self.host}:{self.port}, {len(self._pending)} in flight)"

