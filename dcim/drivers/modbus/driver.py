"""Modbus TCP driver: executes a profile's read plan and decodes it into samples; writes canonical points.

    driver = make_driver(device, profile, context)   # context.shared holds one connection per host:port
    await driver.connect()
    samples = await driver.read()
    await driver.write("supply_temp_setpoint_c", 31.5)

A read of the plan answered with a Modbus exception (illegal address, ...) turns that read's points BAD
with the reason and the rest of the poll still counts; a timeout or a lost connection raises, because the
device as a whole is unreachable. Registers that decode to no reading (NaN, infinity, an overflowing scale)
are BAD samples with the reason; nothing a device sends raises anything but a DriverError.

A poll is one call on the connection for the whole plan (`ModbusConnection.read_plan`: one after the other,
or together when the device's `max_in_flight` is above 1), then each read's answer is decoded from its bytes
by a decode plan (decodeplan.py) made once per profile and shared by its devices, which makes the samples itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dcim.core.samples import Layout, Quality, Sample, Value
from dcim.drivers.base import Driver, DriverContext
from dcim.drivers.errors import BadResponse, WriteRejected
from dcim.drivers.modbus import codec
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.modbus.connection import ModbusConnection, PlannedRead, PollTimer, join, leave
from dcim.drivers.modbus.decodeplan import BitReadDecoder, ReadDecoder
from dcim.drivers.modbus.plan import Read, plan_reads
from dcim.drivers.modbus.transport import READ_COILS, READ_DISCRETE, READ_HOLDING, READ_INPUT
from dcim.drivers.profiles import ByProfile, Profile

FUNCTION = {"holding": READ_HOLDING, "input": READ_INPUT, "coil": READ_COILS, "discrete": READ_DISCRETE}


class ModbusDriver(Driver):
    device: ModbusDevice

    def __init__(self, device: ModbusDevice, profile: Profile[Any], context: DriverContext) -> None:
        super().__init__(device, profile)
        if profile.protocol != "modbus":
            raise ValueError(f"profile {profile.name} is for {profile.protocol}, not modbus")
        self.context = context
        # The read plan, each read's decode plan and what its points become when it is refused: made once
        # per profile (and plan options), shared by its devices (`compiled`). Each read's request is the
        # device's own (its name in errors).
        self.plan, self._decoders, self._names, self._layout = compiled(profile, device.max_gap,
                                                                         device.max_registers)
        # The layout of the last poll's samples (`Layout`): the plan's when every read came back laid out.
        self.last_layout: Layout | None = None
        self._requests: tuple[PlannedRead, ...] = tuple(
            (f"{device.id}: read {r.table} {r.address}+{r.count}", FUNCTION[r.table], r.address, r.count)
            for r in self.plan)
        self._connection: ModbusConnection | None = None
        self._timer: PollTimer | None = None  # the polls' deadline timer, kept from one poll to the next
        self._timer_busy = False

    @property
    def connection(self) -> ModbusConnection:
        if self._connection is None:
            self._connection = join(self.context, self.device)
        return self._connection

    async def connect(self) -> None:
        await self.connection.connect(self.device.timeout)

    async def read(self) -> list[Sample]:
        self.last_layout = None
        device = self.device
        connection = self._connection or self.connection
        # The device's deadline timer, kept from one poll to the next; a read beside a running one (the
        # poller runs one at a time; a caller may not) has one of its own.
        timer: PollTimer | None = None
        if not self._timer_busy:
            if self._timer is None:
                self._timer = PollTimer(asyncio.get_running_loop())
            timer = self._timer
            self._timer_busy = True
        try:
            outcomes, stamps = await connection.read_plan(
                device.unit_id, self._requests, timeout=device.timeout, retries=device.retries,
                window=device.max_in_flight, timer=timer)
        finally:
            if timer is not None:
                self._timer_busy = False
        samples: list[Sample] = []
        device_id = device.id
        laid = True  # while every read so far came back laid out
        # One decoder, request and outcome a read of the plan (no `strict`: see ReadDecoder.samples).
        for decoder, request, names, data, ts_ns in zip(self._decoders, self._requests, self._names,  # noqa: B905
                                                        outcomes, stamps):
            if type(data) is bytes:
                if type(decoder) is ReadDecoder:
                    if len(data) == decoder.size:
                        if not decoder.samples(data, device_id, ts_ns, samples):
                            laid = False
                        continue
                    data = BadResponse(f"{request[0]}: {len(data) // 2} registers in the answer")
                elif 8 * len(data) >= request[3]:
                    if not decoder.samples(data, device_id, ts_ns, samples):
                        laid = False
                    continue
                else:
                    data = BadResponse(f"{request[0]}: {8 * len(data)} bits in the answer")
            laid = False
            reason = str(data)
            samples += [Sample(device_id, name, None, ts_ns, Quality.BAD, reason, measurement)
                        for name, measurement in names]
        self.last_layout = self._layout if laid else None
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await leave(self.context, self.device, connection)


Decoder = ReadDecoder | BitReadDecoder
Compiled = tuple[tuple[Read, ...], tuple[Decoder, ...], tuple[tuple[tuple[str, str], ...], ...], Layout]

_COMPILED: ByProfile[Compiled] = ByProfile()


def compiled(profile: Profile[Any], max_gap: int, max_registers: int) -> Compiled:
    """A profile's read plan, each read's decoder, each read's (point, measurement) names and the layout of a
    poll whose reads all come back laid out (`ReadDecoder.samples`): made once for
    every device of that profile and those plan options (decoders hold no state of a device's), not once
    a device: at 21,500 devices that was 1.6 s of start-up and three decoders a device in memory."""
    return _COMPILED.get(profile, lambda: _compile(profile, max_gap, max_registers), max_gap, max_registers)


def _compile(profile: Profile[Any], max_gap: int, max_registers: int) -> Compiled:
    plan = tuple(plan_reads(profile.points, max_gap=max_gap, max_registers=max_registers))
    measurements = {p.name: profile.measurement(p) for p in profile.points}
    decoders = tuple(
        ReadDecoder(r, measurements) if r.table in ("holding", "input") else BitReadDecoder(r, measurements)
        for r in plan)
    names = tuple(tuple((p.name, measurements[p.name]) for p in r.points) for r in plan)
    layout = Layout(tuple(p for d in decoders for p in d.layout[0]), tuple(m for d in decoders for m in d.layout[1]),
                    texts=bool(decoders) and all(d.texts for d in decoders))
    return plan, decoders, names, layout


def make_driver(device: Any, profile: Profile[Any], context: DriverContext) -> ModbusDriver:
    if not isinstance(device, ModbusDevice):
        raise TypeError(f"{getattr(device, 'id', device)!r} is not a Modbus device")
    return ModbusDriver(device, profile, context)
