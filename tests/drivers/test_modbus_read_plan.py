"""A poll as one call on the connection (`ModbusConnection.read_plan`), against servers written here.

The plan's reads go out one after the other (max_in_flight 1) or together (above 1); either way each read
keeps its own timeout per attempt and its retries, a read refused with a Modbus exception is BAD alone, and
a lost connection fails the poll. The in-flight bound is the connection's, across the devices behind it.
The servers count what they received and what they have not answered; no assertion here depends on how
long anything took.
"""

from __future__ import annotations

import asyncio
import gc
import struct
from collections import Counter
from typing import Any

import pytest

from dcim.core.samples import Quality, Sample
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import DeviceTimeout, DeviceUnreachable
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.modbus.connection import REQUESTS, _Slots
from dcim.drivers.modbus.driver import ModbusDriver
from dcim.drivers.modbus.points import Point
from dcim.drivers.profiles import Profile
from tests.helpers import gains

MBAP = struct.Struct(">HHHB")
ADDRESSES = (0, 100, 200)  # three holding registers far apart: three reads with max_gap 0
POINTS = [Point(name=f"p{a}", table="holding", address=a, type="uint16") for a in ADDRESSES]


async def read_request(reader: asyncio.StreamReader) -> tuple[int, int, int, int, int]:
    """(transaction id, unit, function, address, count) of the next read request."""
    tid, _protocol, length, unit = MBAP.unpack(await reader.readexactly(7))
    function, address, count = struct.unpack(">BHH", await reader.readexactly(length - 1))
    return tid, unit, function, address, count


def registers(tid: int, unit: int, address: int, count: int) -> bytes:
    """The answer: each register holds unit x 1000 + its address, so a mix-up of units or reads shows."""
    values = [unit * 1000 + address + i for i in range(count)]
    pdu = struct.pack(f">BB{count}H", 3, 2 * count, *values)
    return MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu


def exception(tid: int, unit: int, code: int) -> bytes:
    return MBAP.pack(tid, 0, 3, unit) + bytes([0x83, code])


def make_driver(port: int, *, unit: int = 1, max_in_flight: int = 1, context: DriverContext | None = None,
                **extra: Any) -> ModbusDriver:
    device = ModbusDevice.model_validate({
        "id": f"cdu-{unit}", "kind": "cdu", "protocol": "modbus", "profile": "plan", "host": "127.0.0.1",
        "port": port, "unit_id": unit, "timeout": 30, "retries": 0, "max_gap": 0,
        "max_in_flight": max_in_flight, **extra})
    profile = Profile[Point](name="plan", kind="cdu", protocol="modbus", points=POINTS)
    return ModbusDriver(device, profile, context or DriverContext())


def by_name(samples: list[Sample]) -> dict[str, Sample]:
    return {s.point: s for s in samples}


async def unhandled() -> list[dict[str, Any]]:
    """What the loop reports from now on as unhandled (a future whose exception nobody took, a task that
    failed unawaited): the test asserts it stays empty."""
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    return reported


@pytest.mark.parametrize("max_in_flight", [1, 3])
async def test_every_read_of_the_plan_is_answered(tcp_server: Any, max_in_flight: int) -> None:
    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, _function, address, count = await read_request(reader)
            writer.write(registers(tid, unit, address, count))

    driver = make_driver(await tcp_server(answers), max_in_flight=max_in_flight)
    try:
        first = by_name(await driver.read())
        second = by_name(await driver.read())
    finally:
        await driver.close()
    for got in (first, second):
        assert {name: s.value for name, s in got.items()} == {f"p{a}": 1000 + a for a in ADDRESSES}
        assert {s.quality for s in got.values()} == {Quality.GOOD}
        assert {s.measurement for s in got.values()} == {"cdu"}


async def test_reads_in_flight_together_are_taken_whatever_order_they_come_back_in(tcp_server: Any) -> None:
    reported = await unhandled()
    held: list[int] = []

    async def shuffled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            # Nothing is answered until the three reads of the poll are all here: they were in flight together.
            requests = [await read_request(reader) for _ in range(3)]
            held.append(len(requests))
            for tid, unit, _function, address, count in (requests[1], requests[2], requests[0]):
                writer.write(registers(tid, unit, address, count))

    driver = make_driver(await tcp_server(shuffled), max_in_flight=3)
    try:
        for _ in range(3):
            got = by_name(await driver.read())
            assert {name: s.value for name, s in got.items()} == {f"p{a}": 1000 + a for a in ADDRESSES}
    finally:
        await driver.close()
    assert held == [3, 3, 3]
    gc.collect()
    assert reported == []


@pytest.mark.parametrize("max_in_flight", [1, 3])
async def test_an_exception_answer_makes_only_its_read_bad(tcp_server: Any, max_in_flight: int) -> None:
    async def refuses_100(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, _function, address, count = await read_request(reader)
            writer.write(exception(tid, unit, 2) if address == 100 else registers(tid, unit, address, count))

    port = await tcp_server(refuses_100)
    gateway = f"127.0.0.1:{port}"
    gained = gains(REQUESTS)
    driver = make_driver(port, max_in_flight=max_in_flight, retries=2)
    try:
        got = by_name(await driver.read())
    finally:
        await driver.close()
    assert got["p100"].quality is Quality.BAD and got["p100"].value is None
    assert "read holding 100+1: exception 2 (illegal data address)" in got["p100"].reason
    assert (got["p0"].value, got["p200"].value) == (1000, 1200)
    assert got["p0"].quality is got["p200"].quality is Quality.GOOD
    # Illegal address is an answer, not a failure: not retried, and the rest of the poll counts.
    assert gained(gateway=gateway, result="exception") == 1
    assert gained(gateway=gateway, result="ok") == 2


@pytest.mark.parametrize("max_in_flight", [1, 3])
async def test_a_busy_read_is_retried_and_bad_after_its_last_retry(tcp_server: Any, max_in_flight: int) -> None:
    seen: Counter[int] = Counter()

    async def busy_100(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, _function, address, count = await read_request(reader)
            seen[address] += 1
            writer.write(exception(tid, unit, 6) if address == 100 else registers(tid, unit, address, count))

    driver = make_driver(await tcp_server(busy_100), max_in_flight=max_in_flight, retries=2)
    try:
        got = by_name(await driver.read())
    finally:
        await driver.close()
    assert seen == {0: 1, 100: 3, 200: 1}  # busy: tried 1 + 2 retries; the others once
    assert "exception 6 (server device busy)" in got["p100"].reason and got["p100"].value is None
    assert (got["p0"].value, got["p200"].value) == (1000, 1200)


@pytest.mark.parametrize("max_in_flight", [1, 3])
async def test_a_missing_answer_times_out_and_the_retry_is_answered(tcp_server: Any, max_in_flight: int) -> None:
    seen: Counter[int] = Counter()

    async def drops_the_first_read_of_100(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, _function, address, count = await read_request(reader)
            seen[address] += 1
            if address == 100 and seen[address] == 1:
                continue  # never answered
            writer.write(registers(tid, unit, address, count))

    port = await tcp_server(drops_the_first_read_of_100)
    gateway = f"127.0.0.1:{port}"
    gained = gains(REQUESTS)
    # Retries to spare: a machine stalled longer than the timeout may cost another read a retry, never the test.
    driver = make_driver(port, max_in_flight=max_in_flight, timeout=0.5, retries=3)
    try:
        await driver.connection.connect(30)  # connected beforehand, so the short timeout bounds only the reads
        got = by_name(await driver.read())
    finally:
        await driver.close()
    assert {name: s.value for name, s in got.items()} == {f"p{a}": 1000 + a for a in ADDRESSES}
    assert {s.quality for s in got.values()} == {Quality.GOOD}
    assert seen[100] >= 2
    assert gained(gateway=gateway, result="timeout") >= 1
    assert gained(gateway=gateway, result="ok") == 3


@pytest.mark.parametrize("max_in_flight", [1, 3])
async def test_a_silent_device_times_out_the_poll(tcp_server: Any, max_in_flight: int) -> None:
    connections = 0
    received = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, received
        connections += 1
        while True:
            await read_request(reader)
            received += 1

    port = await tcp_server(silent)
    gained = gains(REQUESTS)
    driver = make_driver(port, max_in_flight=max_in_flight, timeout=0.5, retries=1)
    try:
        await driver.connection.connect(30)  # connected beforehand, so the short timeout bounds only the reads
        with pytest.raises(DeviceTimeout, match=r"no answer within 0\.5 s"):
            await driver.read()
    finally:
        await driver.close()
    if max_in_flight == 1:
        assert received == 2  # the first read and its retry; the poll ends there
    else:
        # The three went out together and timed out together: the third silent one reopened the socket (a
        # half-open connection is presumed), and their retries went out on the new one, and timed out.
        assert received == 6
        assert connections == 2
    assert gained(gateway=f"127.0.0.1:{port}", result="timeout") == received


@pytest.mark.parametrize("max_in_flight", [1, 3])
async def test_a_connection_dropped_mid_plan_fails_the_poll(tcp_server: Any, max_in_flight: int) -> None:
    reported = await unhandled()

    async def hangs_up_at_100(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, _function, address, count = await read_request(reader)
            if address == 100:
                writer.close()
                return
            writer.write(registers(tid, unit, address, count))

    port = await tcp_server(hangs_up_at_100)
    gained = gains(REQUESTS)
    driver = make_driver(port, max_in_flight=max_in_flight, retries=2)
    try:
        with pytest.raises(DeviceUnreachable, match="lost"):
            await driver.read()
        # Backing off now: the next poll fails without queueing.
        with pytest.raises(DeviceUnreachable):
            await driver.read()
        assert not driver.connection.connected
    finally:
        await driver.close()
    assert gained(gateway=f"127.0.0.1:{port}", result="unreachable") >= 1
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []


async def test_a_frame_that_is_not_modbus_drops_the_socket_and_the_poll_counts(tcp_server: Any) -> None:
    connections = 0

    async def garbles_100_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        while True:
            tid, unit, _function, address, count = await read_request(reader)
            if address == 100 and first:
                writer.write(MBAP.pack(tid, 7, 3, unit) + bytes([3, 0]))  # protocol id 7
                continue
            writer.write(registers(tid, unit, address, count))

    driver = make_driver(await tcp_server(garbles_100_once), max_in_flight=1)
    try:
        got = by_name(await driver.read())
    finally:
        await driver.close()
    assert "undecodable answer" in got["p100"].reason and got["p100"].quality is Quality.BAD
    assert (got["p0"].value, got["p200"].value) == (1000, 1200)
    assert connections == 2  # the read after the garbage went out on a fresh socket


@pytest.mark.parametrize("second_window", [2, 1])
async def test_devices_sharing_a_gateway_never_exceed_its_max_in_flight(tcp_server: Any,
                                                                         second_window: int) -> None:
    outstanding = 0
    most = 0
    answered = 0

    async def gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Counts what it has not answered; answers once two are waiting, or when no more come for a while
        (that wait only paces the test: what is asserted is the count)."""
        nonlocal outstanding, most, answered
        queue: asyncio.Queue[tuple[int, int, int, int, int] | None] = asyncio.Queue()

        async def receive() -> None:
            nonlocal outstanding, most
            try:
                while True:
                    request = await read_request(reader)
                    outstanding += 1
                    most = max(most, outstanding)
                    queue.put_nowait(request)
            finally:
                queue.put_nowait(None)  # the client has gone

        receiver = asyncio.create_task(receive())
        try:
            gone = False
            while not gone:
                held: list[tuple[int, int, int, int, int]] = []
                try:
                    while len(held) < 2:
                        request = await (asyncio.wait_for(queue.get(), 0.02) if held else queue.get())
                        if request is None:
                            gone = True
                            break
                        held.append(request)
                except TimeoutError:
                    pass
                for tid, unit, _function, address, count in reversed(held):
                    outstanding -= 1
                    answered += 1
                    writer.write(registers(tid, unit, address, count))
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)

    port = await tcp_server(gateway)
    context = DriverContext()
    first = make_driver(port, unit=1, max_in_flight=2, context=context)
    second = make_driver(port, unit=2, max_in_flight=second_window, context=context)
    try:
        results = await asyncio.gather(*(d.read() for _ in range(4) for d in (first, second)))
        assert first.connection is second.connection
    finally:
        await first.close()
        await second.close()
    for i, samples in enumerate(results):
        unit = 1 + i % 2
        assert {name: s.value for name, s in by_name(samples).items()} == \
            {f"p{a}": unit * 1000 + a for a in ADDRESSES}
    assert answered == 8 * 3
    assert most == 2


async def test_a_slot_given_to_a_cancelled_waiter_goes_to_the_next() -> None:
    slots = _Slots(1)
    assert slots.take_now(3) == 1 and slots.free == 0
    first = asyncio.create_task(slots.take())
    second = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    assert not first.done() and not second.done()
    slots.give(1)  # handed to the first in line...
    first.cancel()  # ...which is cancelled before it runs: the slot goes on to the second
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert slots.free == 0
    waiting = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    waiting.cancel()  # cancelled while in line: nothing taken, nothing lost
    with pytest.raises(asyncio.CancelledError):
        await waiting
    slots.give(1)
    assert slots.free == 1 and slots.take_now(1) == 1


async def test_reads_sent_from_the_answers_take_turns_with_other_devices_behind_the_gateway(
        tcp_server: Any) -> None:
    """With one slot, each next read of a poll goes out from the answer to the one before, but only if nobody
    waits for the slot: two devices polled at once behind a gateway that takes one request at a time
    alternate, read by read, and every read of both is answered right."""
    order: list[tuple[int, int]] = []

    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, _function, address, count = await read_request(reader)
            order.append((unit, address))
            writer.write(registers(tid, unit, address, count))

    port = await tcp_server(answers)
    context = DriverContext()
    first = make_driver(port, unit=1, context=context)
    second = make_driver(port, unit=2, context=context)
    try:
        await first.connection.connect(30)
        results = await asyncio.gather(first.read(), second.read())
        assert first.connection._slots.free == 1
    finally:
        await first.close()
        await second.close()
    for unit, samples in zip((1, 2), results, strict=True):
        assert {name: s.value for name, s in by_name(samples).items()} == \
            {f"p{a}": unit * 1000 + a for a in ADDRESSES}
    assert order == [(1, 0), (2, 0), (1, 100), (2, 100), (1, 200), (2, 200)]


async def test_a_poll_cancelled_with_a_read_on_the_wire_gives_its_slot_back(tcp_server: Any) -> None:
    """A poll cancelled while a read that the answer before it sent is unanswered: the slot is free again, the
    late answer is ignored, and the next poll on the connection is answered in full."""
    seen: Counter[int] = Counter()
    hold = asyncio.Event()
    held: list[bytes] = []

    async def holds_100_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, _function, address, count = await read_request(reader)
            seen[address] += 1
            if address == 100 and seen[address] == 1:
                held.append(registers(tid, unit, address, count))
                hold.set()
                continue
            writer.write(registers(tid, unit, address, count))
            if held and address == 0:
                writer.write(held.pop())  # the late answer to the cancelled poll's read, before this one's next

    driver = make_driver(await tcp_server(holds_100_once))
    try:
        await driver.connection.connect(30)
        poll = asyncio.create_task(driver.read())
        await hold.wait()
        assert driver.connection._slots.free == 0
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll
        assert driver.connection._slots.free == 1
        got = by_name(await driver.read())
    finally:
        await driver.close()
    assert {name: s.value for name, s in got.items()} == {f"p{a}": 1000 + a for a in ADDRESSES}
    assert seen == {0: 2, 100: 2, 200: 1}


@pytest.mark.parametrize("max_in_flight", [1, 6])  # 6: both polls' three reads on the wire at once
async def test_the_deadline_timer_kept_between_polls_times_out_each_poll(tcp_server: Any, max_in_flight: int) -> None:
    """The driver keeps its deadline timer from one poll to the next: a poll answered in full, then one whose
    read goes unanswered (timed out), then one answered again; and two polls of one driver at once, one of
    them unanswered, the other answered: the unanswered one times out on its own (the second runs with a timer
    of its own)."""
    seen: Counter[int] = Counter()
    silent: set[int] = set()

    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tid, unit, _function, address, count = await read_request(reader)
            seen[address] += 1
            if seen[address] in silent:
                continue  # this round of the read goes unanswered
            writer.write(registers(tid, unit, address, count))

    # No retries, so an unanswered read times out its poll; 2 s, so a stalled machine does not time out the
    # reads that are answered.
    driver = make_driver(await tcp_server(answers), max_in_flight=max_in_flight, timeout=2.0, retries=0)
    try:
        await driver.connection.connect(30)
        assert len(await driver.read()) == 3
        silent.add(2)  # the second round of every read
        with pytest.raises(DeviceTimeout):
            await driver.read()
        silent.clear()
        got = by_name(await driver.read())
        assert {name: s.value for name, s in got.items()} == {f"p{a}": 1000 + a for a in ADDRESSES}
        if max_in_flight == 1:
            return  # one slot: a second poll waits for the first, and never overlaps it
        silent.add(seen[0] + 1)  # two polls at once: the first one's first read goes unanswered
        results = await asyncio.wait_for(asyncio.gather(driver.read(), driver.read(), return_exceptions=True),
                                         30)
        assert isinstance(results[0], DeviceTimeout), results
        assert isinstance(results[1], list) and len(results[1]) == 3, results
    finally:
        await driver.close()
