"""Modbus TCP driver: executes a profile's read plan and decodes it into samples; writes canonical points.

    driver = make_driver(device, profile, context)   # context.shared holds one connection per host:port
    await driver.connect()
    samples = await driver.read()
    await driver.write("supply_temp_setpoint_c", 31.5)

A read of the plan answered with a Modbus exception (illegal address, ...) turns that read's points BAD
with the reason and the rest of the poll still counts; a timeout or a lost connection raises, because the
device as a whole is unreachable. Registers that decode to no reading (NaN, infinity, an overflowing scale)
are BAD samples with the reason; nothing a device sends raises anything but a DriverError.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from dcim.core.samples import Quality, Sample, Value, now_ns
from dcim.drivers.base import Driver, DriverContext
from dcim.drivers.errors import BadResponse, WriteRejected
from dcim.drivers.modbus import codec
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.modbus.connection import ModbusConnection, join, leave
from dcim.drivers.modbus.decodeplan import ReadDecoder
from dcim.drivers.modbus.plan import Read, plan_reads
from dcim.drivers.modbus.points import Point
from dcim.drivers.profiles import Profile


class ModbusDriver(Driver):
    device: ModbusDevice

    def __init__(self, device: ModbusDevice, profile: Profile[Any], context: DriverContext) -> None:
        super().__init__(device, profile)
        if profile.protocol != "modbus":
            raise ValueError(f"profile {profile.name} is for {profile.protocol}, not modbus")
        self.context = context
        self.plan: list[Read] = plan_reads(
            profile.points, max_gap=device.max_gap, max_registers=device.max_registers
        )
        # Compiled once: each register read's decode plan, and each point's measurement.
        self._decoders = {id(r): ReadDecoder(r) for r in self.plan if r.table in ("holding", "input")}
        self._measurement = {p.name: profile.measurement(p) for p in profile.points}
        self._connection: ModbusConnection | None = None

    @property
    def connection(self) -> ModbusConnection:
        if self._connection is None:
            self._connection = join(self.context, self.device)
        return self._connection

    async def connect(self) -> None:
        await self.connection.connect(self.device.timeout)

    async def _read_raw(self, read: Read) -> list[int] | list[bool]:
        unit = self.device.unit_id
        what = f"{self.device.id}: read {read.table} {read.address}+{read.count}"
        if read.table == "holding":
            response = await self.connection.request(
                what, lambda c: c.read_holding_registers(read.address, count=read.count, device_id=unit),
                timeout=self.device.timeout, retries=self.device.retries)
        elif read.table == "input":
            response = await self.connection.request(
                what, lambda c: c.read_input_registers(read.address, count=read.count, device_id=unit),
                timeout=self.device.timeout, retries=self.device.retries)
        elif read.table == "coil":
            response = await self.connection.request(
                what, lambda c: c.read_coils(read.address, count=read.count, device_id=unit),
                timeout=self.device.timeout, retries=self.device.retries)
        else:
            response = await self.connection.request(
                what, lambda c: c.read_discrete_inputs(read.address, count=read.count, device_id=unit),
                timeout=self.device.timeout, retries=self.device.retries)
        if read.table in ("coil", "discrete"):
            bits = list(response.bits)
            if len(bits) < read.count:
                raise BadResponse(f"{what}: {len(bits)} bits in the answer")
            return bits[: read.count]
        registers = list(response.registers)
        if len(registers) != read.count:
            raise BadResponse(f"{what}: {len(registers)} registers in the answer")
        return registers

    def _sample(self, point: Point, ts_ns: int, value: Value | None, reason: str = "") -> Sample:
        return Sample(
            device=self.device.id, point=point.name, value=value, ts_ns=ts_ns,
            quality=Quality.BAD if reason else Quality.GOOD, reason=reason,
            measurement=self._measurement[point.name],
        )

    async def _read_all(self) -> list[tuple[Read, list[int] | list[bool] | BadResponse, int]]:
        """Every read of the plan: (read, its data or the device's refusal, when it was answered).

        With `max_in_flight` above 1 the reads go out together (the connection matches the answers by
        transaction id); otherwise one after the other. A timeout or a lost connection raises either way."""
        if self.device.max_in_flight > 1 and len(self.plan) > 1:
            outcomes = await asyncio.gather(*(self._read_raw(r) for r in self.plan), return_exceptions=True)
            ts_ns = now_ns()
            together: list[tuple[Read, list[int] | list[bool] | BadResponse, int]] = []
            for read, outcome in zip(self.plan, outcomes, strict=True):
                if isinstance(outcome, BaseException) and not isinstance(outcome, BadResponse):
                    raise outcome
                together.append((read, outcome, ts_ns))
            return together
        answers: list[tuple[Read, list[int] | list[bool] | BadResponse, int]] = []
        for read in self.plan:
            try:
                data: list[int] | list[bool] | BadResponse = await self._read_raw(read)
            except BadResponse as err:
                data = err
            answers.append((read, data, now_ns()))
        return answers

    async def read(self) -> list[Sample]:
        samples: list[Sample] = []
        for read, data, ts_ns in await self._read_all():
            if isinstance(data, BadResponse):
                samples += [self._sample(p, ts_ns, None, str(data)) for p in read.points]
                continue
            decoder = self._decoders.get(id(read))
            if decoder is not None:
                device, measurement = self.device.id, self._measurement
                for point, value, reason in decoder.decode(data):
                    if reason:
                        samples.append(self._sample(point, ts_ns, None, reason))
                    elif value is not None:
                        samples.append(Sample(device, point.name, value, ts_ns, Quality.GOOD, "",
                                              measurement[point.name]))
                continue
            for point in read.points:
                raw = read.slice(data, point)
                try:
                    if point.is_bit_table:
                        value = codec.decode_bit(point, bool(raw[0]))
                    else:
                        value = codec.decode(point, [int(r) for r in raw])
                except codec.DecodeError as err:
                    samples.append(self._sample(point, ts_ns, None, str(err)))
                    continue
                except (ValueError, ArithmeticError, struct.error) as err:
                    # The codec's contract is DecodeError; a gap in it must cost one point, not the daemon.
                    samples.append(self._sample(point, ts_ns, None, f"{point.name}: cannot decode: {err}"))
                    continue
                if value is not None:
                    samples.append(self._sample(point, ts_ns, value))
        return samples

    async def write(self, point: str, value: Value) -> None:
        target = self.profile.point(point)
        checked = target.check_write(value)
        unit = self.device.unit_id
        what = f"{self.device.id}: write {point}"
        timeout, retries = self.device.timeout, self.device.retries
        if target.table == "coil":
            if isinstance(checked, str) or checked not in (0, 1):
                raise WriteRejected(f"{point}: a coil is true or false, not {value!r}")
            await self.connection.request(
                what, lambda c: c.write_coil(target.address, bool(checked), device_id=unit),
                timeout=timeout, retries=retries)
            return
        if target.table != "holding":
            raise WriteRejected(f"{point}: {target.table} points cannot be written")
        if target.bit is not None:
            # The flag shares its word with others: read it, change one bit, write the word back.
            try:
                codec.encode_bit(target, [0] * target.count, checked)
            except codec.EncodeError as err:
                raise WriteRejected(str(err)) from err
            current = await self.connection.request(
                what, lambda c: c.read_holding_registers(target.address, count=target.count, device_id=unit),
                timeout=timeout, retries=retries)
            registers = codec.encode_bit(target, list(current.registers), checked)
        else:
            try:
                registers = codec.encode(target, checked)
            except codec.EncodeError as err:
                raise WriteRejected(str(err)) from err
        if len(registers) == 1:
            await self.connection.request(
                what, lambda c: c.write_register(target.address, registers[0], device_id=unit),
                timeout=timeout, retries=retries)
        else:
            await self.connection.request(
                what, lambda c: c.write_registers(target.address, registers, device_id=unit),
                timeout=timeout, retries=retries)

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await leave(self.context, self.device, connection)


def make_driver(device: Any, profile: Profile[Any], context: DriverContext) -> ModbusDriver:
    if not isinstance(device, ModbusDevice):
        raise TypeError(f"{getattr(device, 'id', device)!r} is not a Modbus device")
    return ModbusDriver(device, profile, context)
