"""One Modbus TCP connection per host:port, shared by every unit id behind it (a gateway).

The socket is `transport.ModbusTcpClient` (MBAP framing, answers matched by transaction id); this module
decides when to connect, how long to back off (jittered, doubling, capped), how long a request may take (the
device's `timeout`, per attempt) and how often to retry (the device's `retries`). So one dead gateway costs
its own devices at most timeout x (retries + 1) per poll and never touches other connections.

While a reconnect is backing off, requests fail at once with DeviceUnreachable instead of queueing: the
poller marks the device offline and tries again next interval.

The slots (`max_in_flight`, 1 unless configured) bound how many requests of the devices behind this
gateway are on the wire at once: many gateways and PLCs answer only one transaction at a time, so more than
one is for servers that are known to take several. A free slot is taken without waiting; when none is free,
requests wait in line, first come first served, across every device behind the connection.

A poll is one call, `read_plan`: the device's whole read plan, each read with its own timeout per attempt
and its own retries, as `request` does for one. Its cost is the hot path of the daemon, so per request it
takes a slot (an integer), writes the 12 bytes and awaits the answer's future: one timer serves the whole
plan (each attempt moves its deadline; it fires once per timeout at most and fails the awaited answer with
TimeoutError), and the metrics are counted once per plan. With a window above 1 (the device's
`max_in_flight`) the reads go out together, as many as the window and the free slots allow, in one
`transport.write`, and the answers are taken in the order the requests were sent, whatever order they come
back in. With a window of 1, one after the other: each next read is sent from the socket's callback that
took the answer before it (when that answer has data and the slot is free again at once), so a poll wakes
its task once, not once per read, and a read waits for no turn of the event loop to go out.

What a poll gets, per read: its data, or a BadResponse (a Modbus exception code, a malformed answer, a frame
that is not Modbus) that makes only that read's points BAD; or the poll raises DeviceTimeout (no answer after
the retries, or a gateway's "target failed to respond") or DeviceUnreachable (no connection, the connection
lost, a gateway's "path unavailable"). When a pipelined poll fails, nothing more is sent, and the requests
already on the wire are awaited (and counted) before it raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from pymodbus.exceptions import ConnectionException, ModbusException

from dcim.core.aio import RearmingTimer
from dcim.core.backoff import Backoff
from dcim.core.logs import truncate
from dcim.core.metrics import REGISTRY
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import BadResponse, DeviceTimeout, DeviceUnreachable, DriverError
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.modbus.transport import Answer, ModbusTcpClient, read_data

log = structlog.get_logger(__name__)

# Every pymodbus failure becomes one of our errors and the poller logs an outage once; pymodbus' own
# warnings ("Failed to connect", once per attempt) would repeat it on every retry. Left alone when an
# operator has set a level for the "pymodbus" logger.
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

GATEWAY_PATH_UNAVAILABLE = 10
GATEWAY_TARGET_FAILED = 11
# Answers that say "try again": acknowledge (5), busy (6), and a gateway whose unit did not answer (11), which
# after the last retry means the device is as good as silent (DeviceTimeout).
RETRYABLE = (5, 6, GATEWAY_TARGET_FAILED)

REQUESTS = REGISTRY.counter("dcim_modbus_requests_total", "Modbus requests", ("gateway", "result"))
CONNECTS = REGISTRY.counter(
    "dcim_modbus_connects_total", "Modbus TCP connection attempts", ("gateway", "result")
)

# Consecutive timeouts (no answer from any unit) after which the socket is presumed half-open and dropped.
SILENT_LIMIT = 3

# One read of a plan, as `read_plan` takes it: (what, for errors; function code; address; count).
PlannedRead = tuple[str, int, int, int]

# What a failed attempt means for its read (`ModbusConnection._failure`).
_RETRY, _FINAL, _FATAL = range(3)

_TIMEOUT_ERRORS = (TimeoutError, DriverError, ModbusException, ValueError, IndexError, KeyError, TypeError,
                   AttributeError, struct.error)


class ExceptionCode(BadResponse):
    """The device answered with a Modbus exception code."""

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        super().__init__(f"{what}: exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")


class _Slots:
    """The requests a connection may have on the wire (`max_in_flight`), shared by every device behind it.

    A free slot is taken with an integer decrement, no await; a request that finds none waits in line (first
    come, first served), and a slot given back goes straight to the first in line."""

    __slots__ = ("_waiters", "free")

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_now(self, want: int) -> int:
        """Up to `want` slots without waiting: as many as are free, none while others wait in line."""
        waiters = self._waiters
        while waiters and waiters[0].done():  # cancelled while waiting
            waiters.popleft()
        free = self.free
        if waiters or free <= 0:
            return 0
        got = want if want < free else free
        self.free = free - got
        return got

    async def take(self) -> None:
        """One slot, waiting in line for it if none is free."""
        if self.take_now(1):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            else:  # handed a slot, then cancelled before running: it goes to the next in line
                self.give(1)
            raise

    def give(self, count: int) -> None:
        waiters = self._waiters
        while count and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1
        self.free += count


class PollTimer(RearmingTimer):
    """The timeouts of one plan's requests with one timer (`RearmingTimer`): `set` gives the awaited answer
    and its deadline; when it is due, the awaited answer fails with TimeoutError. No task is cancelled, so
    nothing is to be uncancelled. A device keeps one across its polls (`read_plan(timer=...)`): at most one
    timer a timeout period instead of one armed and cancelled per poll."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        # The loop the poll runs on, for the reads' clock and futures (`asyncio.get_running_loop()` makes a
        # system call, getpid, each time).
        self.loop = loop
        self.future: asyncio.Future[Any] | None = None

    def set(self, when: float, future: asyncio.Future[Any]) -> None:
        self.future = future
        self.arm(when)

    def due(self) -> None:
        future = self.future
        if future is not None and not future.done():
            future.set_exception(TimeoutError())

    def cancel(self) -> None:
        self.future = None
        self.close()

    def release(self) -> None:
        """The poll is over and the timer stays: the device's next poll moves its deadline on (the timer
        re-arms itself when it finds it moved), or it fires once with nothing to fail and rests."""
        self.future = None
        self.disarm()


class _Chain:
    """The reads of a one-by-one poll (`_read_one_by_one`), each sent from the answer to the one before.

    It stands where the answer's future would in the client's table of requests in flight: the client hands
    it each answer (`set_result`) or the connection's failure (`set_exception`). An answer with data is kept
    (the read's outcome and time); the slot goes back and, if it can be taken again at once and a read is
    left, that read is sent there and then. So the awaiting task is woken once, when the reads are done or
    something needs its attempt loop (an exception answer, a bad one, no slot free, a lost connection, a
    timeout through the deadline): then `waiter` has the answer's PDU (or the error), the read it concerns
    being the first without an outcome."""

    __slots__ = ("_client", "_connection", "_deadline", "_loop", "_reads", "_stamps", "_tid", "_timeout", "_unit",
                 "holding", "ok", "outcomes", "waiter")

    def __init__(self, connection: ModbusConnection, deadline: PollTimer, reads: Sequence[PlannedRead],
                 unit: int, timeout: float, outcomes: list[bytes | BadResponse], stamps: list[int]) -> None:
        self._connection = connection
        self._deadline = deadline
        self._loop = deadline.loop
        self._reads = reads
        self._unit = unit
        self._timeout = timeout
        self.outcomes = outcomes
        self._stamps = stamps
        self._client: ModbusTcpClient | None = None
        self._tid = 0  # of the request on the wire (0: none)
        self.holding = False  # a slot of the connection is this poll's
        self.ok = 0  # reads answered with data
        self.waiter: asyncio.Future[bytes | None] | None = None

    def send(self, client: ModbusTcpClient, index: int, when: float) -> asyncio.Future[bytes | None]:
        """Send read `index` (the slot taken); the future the task awaits. Raises ConnectionException."""
        waiter: asyncio.Future[bytes | None] = self._loop.create_future()
        self.waiter = waiter
        self._client = client
        _what, function, address, count = self._reads[index]
        self._tid = client.send_read_to(self, self._unit, function, address, count)
        self._deadline.set(when, waiter)
        return waiter

    def release(self) -> None:
        """The task is done with this attempt: the request on the wire (if any) is forgotten and the slot (if
        held) given back."""
        if self._tid and self._client is not None:
            self._client.forget(self._tid, self)
        self._tid = 0
        self.waiter = None
        if self.holding:
            self.holding = False
            self._connection._slots.give(1)

    # The client's side, as for a future: `done`, `set_result`, `set_exception`.

    def done(self) -> bool:
        return self.waiter is None or self.waiter.done()

    def set_exception(self, error: BaseException) -> None:
        self._tid = 0
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def set_result(self, pdu: bytes) -> None:
        self._tid = 0
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            outcomes = self.outcomes
            at = len(outcomes)
            data = read_data(self._reads[at][1], pdu)
            if type(data) is not bytes:
                waiter.set_result(pdu)  # an exception answer: the attempt loop decides
                return
            connection = self._connection
            connection._silent = 0
            self.ok += 1
            outcomes.append(data)
            self._stamps.append(time.time_ns())
            self.holding = False
            slots = connection._slots
            slots.give(1)
            at += 1
            client = self._client
            if at == len(self._reads) or client is None or not client.connected or not slots.take_now(1):
                waiter.set_result(None)
                return
            self.holding = True
            _what, function, address, count = self._reads[at]
            self._tid = client.send_read_to(self, self._unit, function, address, count)
            deadline = self._deadline
            deadline.set(self._loop.time() + self._timeout, waiter)
        except Exception as err:  # a bad answer (or a lost socket): the attempt loop decides
            if not waiter.done():
                waiter.set_exception(err)


class ModbusConnection:
    def __init__(
        self, host: str, port: int, *, max_in_flight: int = 1, backoff: Backoff | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.backoff = backoff or Backoff(initial=0.1, maximum=10.0)
        self.users: set[str] = set()
        self._slots = _Slots(max_in_flight)
        self._requests_ok = REQUESTS.child(gateway=self.name, result="ok")  # counted once a poll
        self._connect_lock = asyncio.Lock()
        self._client: ModbusTcpClient | None = None
        self._retry_at = 0.0
        self._last_error = ""
        self._silent = 0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def ensure_connected(self) -> ModbusTcpClient:
        """The connected client; connects (once, for every waiting unit) unless backing off."""
        if self._client is not None and self._client.connected:
            return self._client
        async with self._connect_lock:
            if self._client is not None and self._client.connected:
                return self._client
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                # The same text as the failure that started the wait: the poller logs an outage once,
                # and again only when its error changes.
                raise DeviceUnreachable(self._last_error)
            self._drop()
            client = ModbusTcpClient(self.host, self.port)
            try:
                ok = await client.connect()
            except BaseException:
                client.close()
                raise
            if not ok:
                client.close()
                self._failed(f"cannot connect to {self.name}")
                CONNECTS.inc(gateway=self.name, result="failed")
                raise DeviceUnreachable(self._last_error)
            CONNECTS.inc(gateway=self.name, result="ok")
            if self.backoff.failures:
                log.info("modbus connection restored", gateway=self.name)
            self.backoff.reset()
            self._retry_at = 0.0
            self._silent = 0
            self._client = client
            return client

    async def connect(self, timeout: float) -> None:  # noqa: ASYNC109 - the device's, as for a request
        """Connect now (unless connected or backing off), within `timeout`. Raises DeviceUnreachable."""
        cancels = cancelling()
        try:
            async with asyncio.timeout(timeout):
                await self.ensure_connected()
            raise_if_cancelled(cancels)
        except TimeoutError as err:
            self._failed(f"connecting to {self.name} timed out")
            raise DeviceUnreachable(self._last_error) from err

    def _failed(self, error: str) -> None:
        self._last_error = error
        self._retry_at = time.monotonic() + self.backoff.next()

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def request(
        self, what: str, call: Callable[[ModbusTcpClient], Awaitable[Answer]], *,
        timeout: float, retries: int,  # noqa: ASYNC109 - per attempt, not for the whole call
    ) -> Answer:
        """Run one request with the device's timeout per attempt and its retries. Raises DriverError."""
        error: DriverError = DeviceTimeout(f"{what}: no answer")
        cancels = cancelling()
        await self._slots.take()
        try:
            for _attempt in range(retries + 1):
                try:
                    async with asyncio.timeout(timeout):
                        client = await self.ensure_connected()
                        response = await call(client)
                    raise_if_cancelled(cancels)
                except TimeoutError:
                    error = self._timed_out(what, timeout)
                    continue
                except DeviceUnreachable:
                    REQUESTS.inc(gateway=self.name, result="unreachable")
                    raise
                except ConnectionException:
                    REQUESTS.inc(gateway=self.name, result="unreachable")
                    error = self._lost(f"connection to {self.name} lost")
                    continue
                except ModbusException as err:
                    REQUESTS.inc(gateway=self.name, result="bad")
                    raise BadResponse(f"{what}: {truncate(str(err))}") from err
                except (ValueError, IndexError, KeyError, TypeError, AttributeError, struct.error) as err:
                    # A frame that is not Modbus (transport.ModbusTcpClient fails the request with ValueError):
                    # the stream is out of step now, so start over on a fresh socket; the device answered
                    # nonsense, it is not down.
                    REQUESTS.inc(gateway=self.name, result="bad")
                    self._drop()
                    raise BadResponse(f"{what}: undecodable answer: {type(err).__name__}: {truncate(str(err))}") \
                        from err
                self._silent = 0
                if response.isError():
                    REQUESTS.inc(gateway=self.name, result="exception")
                    code = response.exception_code
                    if code == GATEWAY_PATH_UNAVAILABLE:
                        raise DeviceUnreachable(str(ExceptionCode(code, what)))
                    if code in RETRYABLE:
                        # The unit exists but cannot answer now (busy, or silent behind its gateway).
                        error = ExceptionCode(code, what)
                        if code == GATEWAY_TARGET_FAILED:
                            error = DeviceTimeout(str(error))
                        continue
                    raise ExceptionCode(code, what)
                REQUESTS.inc(gateway=self.name, result="ok")
                return response
        finally:
            self._slots.give(1)
        raise error

    async def read_plan(
        self, unit: int, reads: Sequence[PlannedRead], *,
        timeout: float, retries: int, window: int = 1,  # noqa: ASYNC109 - per attempt, not for the whole call
        timer: PollTimer | None = None,
    ) -> tuple[list[bytes | BadResponse], list[int]]:
        """A poll: every read of the plan, each with the device's timeout per attempt and its retries.

        Returns, per read, its data as `transport.read_data` gives it (or the BadResponse that makes that
        read's points BAD), and when it was answered (ns since the epoch; one time for all of a pipelined
        plan). Raises DeviceTimeout or DeviceUnreachable when the device cannot be polled. With `window`
        above 1, up to that many reads are in flight together (within the connection's `max_in_flight`).
        `timer`: the device's own (a `PollTimer`), kept from one poll to the next; else one for this poll."""
        own = timer is None
        deadline = PollTimer(asyncio.get_running_loop()) if timer is None else timer
        try:
            if window > 1 and len(reads) > 1:
                return await self._read_pipelined(unit, reads, timeout, retries, window, deadline)
            return await self._read_one_by_one(unit, reads, timeout, retries, deadline)
        finally:
            if own:
                deadline.cancel()
            else:
                deadline.release()

    async def _read_one_by_one(
        self, unit: int, reads: Sequence[PlannedRead], timeout: float, retries: int,  # noqa: ASYNC109
        deadline: PollTimer,
    ) -> tuple[list[bytes | BadResponse], list[int]]:
        loop = deadline.loop
        slots = self._slots
        outcomes: list[bytes | BadResponse] = []
        stamps: list[int] = []
        # Sends each next read from the answer to the one before (`_Chain`): a poll whose reads all come back
        # with data wakes this task once. Whatever else happens to a read comes back here, to the attempt loop.
        chain = _Chain(self, deadline, reads, unit, timeout, outcomes, stamps)
        attempts = retries + 1
        index = -1  # the read this loop is at (the chain may have gone past it), its attempts, its last error
        tries = 0
        error: DriverError | None = None
        try:
            while (at := len(outcomes)) < len(reads):
                if at != index:
                    index, tries, error = at, 0, None
                what, function, _address, _count = reads[index]
                if tries == attempts:
                    assert error is not None
                    if not isinstance(error, BadResponse):
                        raise error
                    outcomes.append(error)  # busy (or acknowledge) after the last retry: that read is BAD
                    stamps.append(time.time_ns())
                    continue
                tries += 1
                if not slots.take_now(1):
                    await slots.take()
                chain.holding = True
                client = None
                try:
                    start = loop.time()
                    client = self._connected() or await self._connect_by(start + timeout)
                    pdu = await chain.send(client, index, start + timeout)
                    if pdu is None:
                        continue  # the chain took this read's data, and perhaps the next ones'
                    if len(outcomes) != index:  # the answer of a read the chain sent
                        index, tries = len(outcomes), 1
                        what, function = reads[index][0], reads[index][1]
                    data = read_data(function, pdu)
                except _TIMEOUT_ERRORS as err:
                    if len(outcomes) != index:  # the failure of a read the chain sent
                        index, tries = len(outcomes), 1
                        what = reads[index][0]
                    kind, error = self._failure(what, timeout, err, client)
                    if kind == _RETRY:
                        continue
                    if kind == _FATAL:
                        raise  # DeviceUnreachable, from connecting: as it came
                    assert isinstance(error, BadResponse)
                    outcomes.append(error)
                    stamps.append(time.time_ns())
                    continue
                finally:
                    chain.release()
                self._silent = 0
                if type(data) is bytes:
                    chain.ok += 1
                    outcomes.append(data)
                    stamps.append(time.time_ns())
                    continue
                assert isinstance(data, int)
                kind, error = self._exception_answer(what, data)
                if kind == _RETRY:
                    continue
                if kind == _FATAL:
                    raise error
                assert isinstance(error, BadResponse)
                outcomes.append(error)
                stamps.append(time.time_ns())
        finally:
            if chain.ok:
                self._requests_ok.inc(chain.ok)
        return outcomes, stamps

    async def _read_pipelined(
        self, unit: int, reads: Sequence[PlannedRead], timeout: float, retries: int,  # noqa: ASYNC109
        window: int, deadline: PollTimer,
    ) -> tuple[list[bytes | BadResponse], list[int]]:
        loop = deadline.loop
        slots = self._slots
        attempts = retries + 1
        outcomes: list[bytes | BadResponse | None] = [None] * len(reads)
        tries = [0] * len(reads)
        waiting = deque(range(len(reads)))  # reads not sent yet (or to be sent again), in plan order
        retry: list[int] = []  # reads to send again, in the order their attempts failed
        # On the wire, in the order sent (so their deadlines never decrease): read, tid, future, when, client.
        sent: deque[tuple[int, int, asyncio.Future[bytes], float, ModbusTcpClient]] = deque()
        fatal: DriverError | None = None
        ok = 0

        def settle(index: int, kind: int, error: DriverError) -> None:
            """A failed attempt of read `index`: retry it (before the reads not sent yet), keep its
            BadResponse, or fail the poll."""
            nonlocal fatal
            if fatal is not None:
                return
            if kind == _RETRY and tries[index] < attempts:
                retry.append(index)
            elif kind == _FATAL or not isinstance(error, BadResponse):
                fatal = error
            else:
                outcomes[index] = error

        try:
            while sent or (fatal is None and (retry or waiting)):
                if retry and fatal is None:
                    waiting.extendleft(reversed(retry))
                    retry.clear()
                if waiting and fatal is None and len(sent) < window:
                    got = slots.take_now(min(window - len(sent), len(waiting)))
                    if not got and not sent:
                        await slots.take()
                        got = 1 + slots.take_now(min(window, len(waiting)) - 1)
                    if got:
                        batch = [waiting.popleft() for _ in range(got)]
                        client = None
                        try:
                            start = loop.time()
                            client = self._connected() or await self._connect_by(start + timeout)
                            futures = client.send_reads(unit, [reads[i][1:] for i in batch])
                        except BaseException as err:
                            # Connecting failed (or the socket closed under us): an attempt of the first.
                            slots.give(got)
                            waiting.extendleft(reversed(batch[1:]))
                            if not isinstance(err, _TIMEOUT_ERRORS):
                                raise
                            tries[batch[0]] += 1
                            kind, error = self._failure(reads[batch[0]][0], timeout, err, client)
                            settle(batch[0], kind, error)
                            continue
                        when = start + timeout
                        for index, (tid, future) in zip(batch, futures, strict=True):
                            tries[index] += 1
                            sent.append((index, tid, future, when, client))
                if not sent:
                    continue
                index, tid, future, when, client = sent.popleft()
                deadline.set(when, future)
                try:
                    try:
                        pdu = await future
                    finally:
                        client.forget(tid, future)
                        slots.give(1)
                    data = read_data(reads[index][1], pdu)
                except TimeoutError as err:
                    kind, error = self._failure(reads[index][0], timeout, err, client)
                    settle(index, kind, error)
                    # The others sent with it (or before) whose time is up too: timed out now, before any
                    # retry is sent (the third silent one may reopen the socket under them).
                    now = loop.time()
                    for entry in [e for e in sent if e[3] <= now and not e[2].done()]:
                        sent.remove(entry)
                        e_index, e_tid, e_future, _when, e_client = entry
                        e_client.forget(e_tid, e_future)
                        _discard(e_future)
                        slots.give(1)
                        kind, error = self._failure(reads[e_index][0], timeout, TimeoutError(), e_client)
                        settle(e_index, kind, error)
                    continue
                except _TIMEOUT_ERRORS as err:
                    kind, error = self._failure(reads[index][0], timeout, err, client)
                    settle(index, kind, error)
                    continue
                self._silent = 0
                if type(data) is bytes:
                    ok += 1
                    if fatal is None:
                        outcomes[index] = data
                    continue
                assert isinstance(data, int)
                kind, error = self._exception_answer(reads[index][0], data)
                settle(index, kind, error)
        finally:
            if ok:
                self._requests_ok.inc(ok)
            for _index, tid, future, _when, client in sent:  # only when cancelled: nothing else leaves any
                client.forget(tid, future)
                _discard(future)
                slots.give(1)
        if fatal is not None:
            raise fatal
        stamp = time.time_ns()
        finished: list[bytes | BadResponse] = []
        for outcome in outcomes:
            assert outcome is not None
            finished.append(outcome)
        return finished, [stamp] * len(finished)

    def _connected(self) -> ModbusTcpClient | None:
        """The client, if connected: a poll's attempt needs no await for it then."""
        client = self._client
        return client if client is not None and client.connected else None

    async def _connect_by(self, when: float) -> ModbusTcpClient:
        """`ensure_connected` within the attempt's deadline (the only await of a poll besides the answers
        and a wait for a slot, so the one place where a cancellation could be swallowed: checked here)."""
        cancels = cancelling()
        async with asyncio.timeout_at(when):
            client = await self.ensure_connected()
        raise_if_cancelled(cancels)
        return client

    def _failure(self, what: str, timeout: float, err: BaseException,
                 client: ModbusTcpClient | None) -> tuple[int, DriverError]:
        """What a failed attempt means, as `request` decides it: retry, a BAD read, or the poll fails. Counts
        the request; `client` is the socket the request went out on (None: it failed connecting)."""
        if isinstance(err, TimeoutError):
            return _RETRY, self._timed_out(what, timeout)
        if isinstance(err, DeviceUnreachable):
            REQUESTS.inc(gateway=self.name, result="unreachable")
            return _FATAL, err
        if isinstance(err, ConnectionException):
            REQUESTS.inc(gateway=self.name, result="unreachable")
            return _RETRY, self._lost(f"connection to {self.name} lost", client)
        if isinstance(err, ModbusException):
            REQUESTS.inc(gateway=self.name, result="bad")
            return _FINAL, BadResponse(f"{what}: {truncate(str(err))}")
        if isinstance(err, DriverError):
            raise err
        # A frame that is not Modbus (transport.ModbusTcpClient fails the request with ValueError): the stream
        # is out of step now, so start over on a fresh socket; the device answered nonsense, it is not down.
        REQUESTS.inc(gateway=self.name, result="bad")
        if client is None or client is self._client:
            self._drop()
        return _FINAL, BadResponse(f"{what}: undecodable answer: {type(err).__name__}: {truncate(str(err))}")

    def _exception_answer(self, what: str, code: int) -> tuple[int, DriverError]:
        """A Modbus exception answer to a read, as `request` decides it."""
        REQUESTS.inc(gateway=self.name, result="exception")
        if code == GATEWAY_PATH_UNAVAILABLE:
            return _FATAL, DeviceUnreachable(str(ExceptionCode(code, what)))
        if code in RETRYABLE:
            # The unit exists but cannot answer now (busy, or silent behind its gateway).
            if code == GATEWAY_TARGET_FAILED:
                return _RETRY, DeviceTimeout(str(ExceptionCode(code, what)))
            return _RETRY, ExceptionCode(code, what)
        return _FINAL, ExceptionCode(code, what)

    def _timed_out(self, what: str, timeout: float) -> DriverError:
        """An attempt that had no answer (or no connection) in time: the error it leaves. Counts it."""
        self._silent += 1
        if self._client is None:
            if not self._connect_lock.locked():
                self._failed(f"connecting to {self.name} timed out")
            error: DriverError = DeviceUnreachable(f"connecting to {self.name} timed out")
        elif not self._client.connected:
            error = self._lost(f"connection to {self.name} lost")
        else:
            error = DeviceTimeout(f"{what}: no answer within {timeout:g} s")
            if self._silent >= SILENT_LIMIT:
                # Perhaps a half-open socket: open a fresh one for the next attempt. TCP itself worked, so no
                # backoff (a unit that is merely silent keeps timing out).
                log.debug("modbus connection silent, reopening", gateway=self.name, unanswered=self._silent)
                self._silent = 0
                self._drop()
        REQUESTS.inc(gateway=self.name, result="timeout")
        return error

    def _lost(self, error: str, client: ModbusTcpClient | None = None) -> DeviceUnreachable:
        """The connection is lost: drop it and back off. `client`, when given, is the socket a request saw
        fail; if it is no longer the connection's (another request already handled its loss, or a new one
        is open), nothing more is done: one loss, one backoff step."""
        if client is not None and client is not self._client:
            return DeviceUnreachable(error)
        if self._client is not None:
            log.warning("modbus connection lost", gateway=self.name, error=error)
        self._drop()
        self._failed(error)
        return DeviceUnreachable(error)

    async def close(self) -> None:
        self._drop()


def _discard(future: asyncio.Future[bytes]) -> None:
    """An answer no longer awaited: cancelled, or its exception taken (so asyncio does not log it as lost)."""
    if not future.cancel() and not future.cancelled():
        future.exception()


def cancelling() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def raise_if_cancelled(before: int) -> None:
    """Re-raise a cancellation that an inner `asyncio.wait_for` swallowed.

    On Python 3.11 wait_for drops a cancellation that arrives as the awaited future completes, and the task
    stays marked as cancelling: without this check a poller task would ignore its shutdown and poll on for
    ever. The client in transport.py does not use wait_for; the check stays for the connect path's timeouts.
    """
    if cancelling() > before:
        raise asyncio.CancelledError


def _key(device: ModbusDevice) -> str:
    return f"modbus:{device.host}:{device.port}"


def join(context: DriverContext, device: ModbusDevice) -> ModbusConnection:
    """The connection of the device's host:port, created by the first device to ask."""
    connection: Any = context.shared.get(_key(device))
    if connection is None:
        connection = ModbusConnection(device.host, device.port, max_in_flight=device.max_in_flight)
        context.shared[_key(device)] = connection
    assert isinstance(connection, ModbusConnection)
    connection.users.add(device.id)
    return connection


async def leave(context: DriverContext, device: ModbusDevice, connection: ModbusConnection) -> None:
    """Close the connection when its last device leaves."""
    connection.users.discard(device.id)
    if not connection.users:
        if context.shared.get(_key(device)) is connection:
            del context.shared[_key(device)]
        await connection.close()
