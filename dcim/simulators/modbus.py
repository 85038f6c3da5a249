"""CDU simulator over Modbus TCP: the plant's values served through each device's own profile.

One pymodbus TCP server per distinct host:port; devices that share an address are unit ids behind one
server, as behind a real gateway. Each unit's datastore is laid out from ITS profile (one block per table,
from its lowest to its highest address, so bridged gaps read 0), and an action hook refreshes the table
from `plant.values(device)` on every request, encoding with the same codec the driver decodes with.

Writes to writable points are decoded with the profile and forwarded to `plant.write`; a value the profile
or the plant refuses gets exception 3 (illegal data value), a write to a read-only or unmapped register
exception 2 (illegal data address). A unit whose plant device has the `no_response` fault drops every
request, so its clients time out (with the fault parameter `gateway: true` it answers exception 11 instead,
as a Modbus TCP gateway does for a silent serial unit). A plant value missing for a point with `missing`
markers is served as the first marker (the driver then omits it), otherwise the register reads 0.

    simulator = ModbusSimulator(plant, devices)
    await simulator.start(); ...; await simulator.stop()     # tests: `requests` counts what arrived
    await serve(plant, devices)                              # `dcim simulate`: until cancelled
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from dcim.drivers.errors import WriteRejected
from dcim.drivers.modbus import codec
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.modbus.points import Point
from dcim.drivers.profiles import Profile, load_profile
from dcim.simulators.plant import Plant

log = structlog.get_logger(__name__)

# pymodbus logs a traceback for every request to an unknown unit id; the client gets exception 4 anyway.
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

TABLE_OF_FUNCTION = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding",
                     16: "holding", 22: "holding", 23: "holding", 4: "input"}
WRITE_FUNCTIONS = (5, 6, 15, 16, 22, 23)
# The order of pymodbus' non-shared blocks: (coils, discrete inputs, holding registers, input registers).
BLOCKS = ("coil", "discrete", "holding", "input")


class _Unit:
    """One simulated device: its profile's registers, refreshed from the plant."""

    def __init__(self, plant: Plant, device: ModbusDevice, profile: Profile[Any]) -> None:
        self.plant = plant
        self.device = device
        self.profile = profile
        self.tables: dict[str, list[Point]] = {t: [] for t in BLOCKS}
        for point in profile.points:
            self.tables[point.table].append(point)
        self.dropped = 0
        self._warned: set[str] = set()

    def simdevice(self) -> SimDevice:
        blocks: list[list[SimData]] = []
        for table in BLOCKS:
            points = self.tables[table]
            if table in ("coil", "discrete"):
                size = max((p.address + 1 for p in points), default=1)
                blocks.append([SimData(0, count=size, values=False, datatype=DataType.BITS)])
            elif points:
                low = min(p.address for p in points)
                high = max(p.address + p.count for p in points)
                blocks.append([SimData(low, count=high - low, values=0, datatype=DataType.REGISTERS)])
            else:
                blocks.append([SimData(0, count=1, datatype=DataType.INVALID)])
        simdata = (blocks[0], blocks[1], blocks[2], blocks[3])
        return SimDevice(self.device.unit_id, simdata=simdata, use_bit_addressing=True, action=self.action)

    async def action(
        self, function_code: int, start_address: int, address: int, count: int,
        registers: list[int], set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if not self.plant.answering(self.device.id):
            self.dropped += 1
            if (self.plant.fault(self.device.id, "no_response") or {}).get("gateway"):
                # A gateway answers for its silent serial unit: "gateway target device failed to respond".
                return ExcCodes.GATEWAY_NO_RESPONSE
            # pymodbus sends no answer at all for this exception when ignore_missing_devices is set.
            raise NoSuchIdException(f"{self.device.id} is not answering (fault)")
        table = TABLE_OF_FUNCTION.get(function_code)
        if table is None or not self.tables[table]:
            return ExcCodes.ILLEGAL_ADDRESS
        values = self.plant.values(self.device.id)
        self._refresh(table, start_address, registers, values)
        if set_values is None:
            return None
        if table == "coil":
            return self._write_bits(address, [bool(v) for v in set_values])
        return self._write_registers(start_address, address, [int(v) for v in set_values], registers)

    # ---- reads -------------------------------------------------------------------------------------

    def _refresh(self, table: str, start: int, registers: list[int], values: dict[str, Any]) -> None:
        points = self.tables[table]
        if table in ("coil", "discrete"):
            for point in points:
                value = values.get(point.name)
                if value is None:
                    continue
                raw = self._bit_raw(point, value)
                word, bit = divmod(point.address, 16)
                word -= start
                registers[word] = registers[word] | (1 << bit) if raw else registers[word] & ~(1 << bit)
            return
        whole = [p for p in points if p.bit is None]
        for point in whole:
            encoded = self._encode(point, values.get(point.name))
            if encoded is not None:
                offset = point.address - start
                registers[offset : offset + len(encoded)] = encoded
        flags = [p for p in points if p.bit is not None]
        covered = {a for p in whole for a in range(p.address, p.address + p.count)}
        for point in flags:
            for a in range(point.address, point.address + point.count):
                if a not in covered:
                    registers[a - start] = 0
        for point in flags:
            value = values.get(point.name)
            if value is None:
                continue
            offset = point.address - start
            current = registers[offset : offset + point.count]
            registers[offset : offset + point.count] = codec.encode_bit(point, current, bool(value))

    def _encode(self, point: Point, value: Any) -> list[int] | None:
        try:
            if value is None:
                if not point.missing:
                    return None
                return codec.encode(point.model_copy(update={"scale": 1.0, "offset": 0.0, "enum": None}),
                                    point.missing[0])
            return codec.encode(point, value)
        except codec.EncodeError as err:
            if point.name not in self._warned:
                self._warned.add(point.name)
                log.warning("plant value does not fit the profile", device=self.device.id, error=str(err))
            return None

    def _bit_raw(self, point: Point, value: Any) -> bool:
        if point.enum is not None and isinstance(value, str):
            for code, state in point.enum.items():
                if state == value:
                    return bool(code)
        return bool(value)

    # ---- writes ------------------------------------------------------------------------------------

    def _forward(self, point: Point, value: Any) -> ExcCodes | None:
        try:
            checked = point.check_write(value)
            self.plant.write(self.device.id, point.name, checked)
        except (WriteRejected, KeyError, ValueError, TypeError) as err:
            log.info("simulated write refused", device=self.device.id, point=point.name, error=str(err))
            return ExcCodes.ILLEGAL_VALUE
        return None

    def _write_bits(self, address: int, bits: Sequence[bool]) -> ExcCodes | None:
        touched = [p for p in self.tables["coil"] if address <= p.address < address + len(bits)]
        if len(touched) != len({p.address for p in touched}) or len(touched) < len(bits):
            return ExcCodes.ILLEGAL_ADDRESS
        for point in touched:
            if point.writable is False:
                return ExcCodes.ILLEGAL_ADDRESS
        for point in touched:
            bit = bits[point.address - address]
            value = point.enum.get(int(bit)) if point.enum is not None else bit
            if (result := self._forward(point, value)) is not None:
                return result
        return None

    def _write_registers(
        self, start: int, address: int, new: list[int], registers: list[int]
    ) -> ExcCodes | None:
        end = address + len(new)
        points = self.tables["holding"]
        touched = [p for p in points if p.address < end and address < p.address + p.count]
        covered = {a for p in touched for a in range(p.address, p.address + p.count)}
        if not touched or any(a not in covered for a in range(address, end)):
            return ExcCodes.ILLEGAL_ADDRESS
        after = list(registers)
        after[address - start : end - start] = new
        changes: list[tuple[Point, Any]] = []
        for point in touched:
            span = slice(point.address - start, point.address - start + point.count)
            try:
                old, value = codec.decode(point, registers[span]), codec.decode(point, after[span])
            except codec.DecodeError:
                return ExcCodes.ILLEGAL_VALUE
            if point.writable is False:
                if old != value:
                    return ExcCodes.ILLEGAL_ADDRESS
                continue
            # A flag word is written whole: forward only the flags that change.
            if point.bit is None or old != value:
                changes.append((point, value))
        for point, value in changes:
            if (result := self._forward(point, value)) is not None:
                return result
        return None


class ModbusSimulator:
    def __init__(self, plant: Plant, devices: Sequence[ModbusDevice], *,
                 profile_dirs: tuple[Path, ...] = ()) -> None:
        self.plant = plant
        self.addresses: dict[tuple[str, int], list[_Unit]] = {}
        for device in devices:
            unit = _Unit(plant, device, load_profile(device.profile, profile_dirs))
            units = self.addresses.setdefault((device.host, device.port), [])
            if any(u.device.unit_id == device.unit_id for u in units):
                raise ValueError(f"{device.id}: unit id {device.unit_id} is already served on "
                                 f"{device.host}:{device.port}")
            units.append(unit)
        # (device id, function code) -> requests received, answered or not.
        self.requests: Counter[tuple[str, int]] = Counter()
        self._servers: list[ModbusTcpServer] = []

    def _tracer(self, units: list[_Unit]) -> Any:
        by_unit = {u.device.unit_id: u.device.id for u in units}

        def trace(sending: bool, pdu: ModbusPDU) -> ModbusPDU:
            if not sending:
                self.requests[(by_unit.get(pdu.dev_id, f"unit {pdu.dev_id}"), pdu.function_code)] += 1
            return pdu

        return trace

    def writes(self, device: str) -> int:
        """Write requests (functions 5, 6, 15, 16, 22, 23) that reached the device."""
        return sum(n for (dev, fc), n in self.requests.items() if dev == device and fc in WRITE_FUNCTIONS)

    def connections(self) -> int:
        """TCP connections open to the simulator's servers right now."""
        return sum(len(server.active_connections) for server in self._servers)

    async def start(self) -> None:
        try:
            for (host, port), units in self.addresses.items():
                server = ModbusTcpServer(
                    [u.simdevice() for u in units], address=(host, port),
                    ignore_missing_devices=True, trace_pdu=self._tracer(units),
                )
                self._servers.append(server)
                await server.serve_forever(background=True)
                log.debug("modbus simulator listening", address=f"{host}:{port}",
                          devices=[u.device.id for u in units])
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            await server.shutdown()  # type: ignore[no-untyped-call]


async def serve(plant: Plant, devices: list[ModbusDevice], *, profile_dirs: tuple[Path, ...] = (),
                ready: asyncio.Event | None = None) -> None:
    """Serve every given device on its host:port until cancelled; cancellation closes the sockets.
    `ready` is set once every listening socket is bound (`start` returns only then)."""
    simulator = ModbusSimulator(plant, devices, profile_dirs=profile_dirs)
    await simulator.start()
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
