"""Small helpers for tests: wait for a condition with a deadline instead of sleeping, and ports held for
servers that have not started yet.

    from tests.helpers import wait_until
    rows = await wait_until(lambda: influx.query("SELECT * FROM cdu"), timeout=10)

The predicate may be a plain function or return an awaitable; its first truthy result is returned.

    port = free_port()          # a TCP port held for this test: write it into a configuration, start the
                                # server later; nobody else can get it meanwhile
    port = hold_udp_port()      # the same for UDP (SNMP); the simulator serves on that very socket:
    hand_over(plant, config.devices)    # (plant.sockets), before the SNMP simulator starts

A held TCP port is a socket bound with SO_REUSEADDR and never listening: the kernel neither hands that port
to another bind(0) nor uses it for an outgoing connection, while a server that binds it with SO_REUSEADDR
(asyncio, aiohttp, pymodbus, asyncua, mosquitto and Go servers all do) gets it and listens. A UDP port
cannot be shared that way with a server that does not set SO_REUSEADDR (pysnmp): its socket itself is
handed over (``take_udp``, ``Plant.sockets``). Held ports are released after each test (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar, overload

import pytest

from dcim.core.samples import Batch, DeviceStatus
from tests.servers import find_binary, hold_port

__all__ = [
    "free_port",
    "hand_over",
    "hold_udp_port",
    "release_held_ports",
    "require_binary",
    "silent_servers",
    "take_udp",
    "wait_until",
    "wait_until_sync",
]

# Sockets holding ports for the current test, by (kind, port); released by release_held_ports().
_HELD: dict[tuple[int, int], socket.socket] = {}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port held for the rest of the test: bound (SO_REUSEADDR), never listening, so no other bind(0)
    or outgoing connection can take it before the server it is meant for binds it."""
    sock = hold_port(host)
    port: int = sock.getsockname()[1]
    _HELD[(socket.SOCK_STREAM, port)] = sock
    return port


def gains(counter: Any) -> Callable[..., float]:
    """What each series of a process-wide counter gains from now on: `gained = gains(REQUESTS)`, then
    `gained(gateway=..., result="ok")`. A series named by a port (a gateway's host:port) may already hold an
    earlier test's counts: the OS hands the same port out again within one run of the suite."""
    before = dict(counter.values)

    def gained(**labels: str) -> float:
        return float(counter.get(**labels) - before.get(counter._key(labels), 0.0))

    return gained


def hold_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port held for the rest of the test by a bound socket; the simulator serving it must take that
    socket over (``take_udp(port)``), since a UDP server cannot bind a port another socket holds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    port: int = sock.getsockname()[1]
    _HELD[(socket.SOCK_DGRAM, port)] = sock
    return port


def take_udp(port: int) -> socket.socket | None:
    """The socket holding UDP ``port`` (from hold_udp_port), now the caller's to serve on; None if no socket
    of this process holds it (a fixed port in a test's configuration)."""
    return _HELD.pop((socket.SOCK_DGRAM, port), None)


def hand_over(plant: Any, devices: Iterable[Any]) -> Any:
    """Give the simulators the UDP sockets this test holds for ``devices``' ports (``plant.sockets``), so
    each is served on the very socket that held its port. Returns the plant."""
    for device in devices:
        port = getattr(device, "port", None)
        if isinstance(port, int) and (sock := take_udp(port)) is not None:
            plant.sockets[device.id] = sock
    return plant


def release_held_ports() -> None:
    """Close every socket still holding a port (after each test; the servers have their own sockets)."""
    held = list(_HELD.values())
    _HELD.clear()
    for sock in held:
        sock.close()

T = TypeVar("T")


def _describe(predicate: object, message: str | None, last: object, error: BaseException | None) -> str:
    what = message or getattr(predicate, "__qualname__", repr(predicate))
    detail = f"last error {error!r}" if error is not None else f"last result {last!r}"
    return f"condition not met: {what}; {detail}"[:2000]


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]], timeout: float = ..., interval: float = ..., *,  # noqa: ASYNC109
    message: str | None = ..., ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T], timeout: float = ..., interval: float = ..., *,  # noqa: ASYNC109
    message: str | None = ..., ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


# A timeout argument rather than asyncio.timeout(): the error then says what the condition last gave.
async def wait_until(
    predicate: Callable[[], Awaitable[T]] | Callable[[], T],
    timeout: float = 10.0,  # noqa: ASYNC109
    interval: float = 0.02,
    *,
    message: str | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` every ``interval`` seconds until it returns something truthy and return that.

    Exceptions of the types in ``ignore`` count as "not yet" (say, a database that is still starting);
    any other exception propagates at once. After ``timeout`` seconds, AssertionError with the last result.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            result = predicate()
            value = await result if inspect.isawaitable(result) else result
        except ignore as err:
            error = err
        else:
            error = None
            if value:
                return value
            last = value
        if loop.time() >= deadline:
            raise AssertionError(_describe(predicate, message, last, error))
        await asyncio.sleep(interval)


def wait_until_sync(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    *,
    message: str | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """wait_until for synchronous tests (blocks the calling thread)."""
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as err:
            error = err
        else:
            error = None
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(_describe(predicate, message, last, error))
        time.sleep(interval)


def require_binary(binary: str, package: str) -> str:
    """The path of ``binary``; if it is missing, skip the calling test, or fail it under CI (CI=true),
    because CI must run everything. Call it in a test or fixture::

        snmpget = require_binary("snmpget", "snmp")
    """
    path = find_binary(binary)
    if path is not None:
        return path
    message = f"{binary} is not installed: run scripts/install-test-deps.sh (apt-get install {package})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must run every test")
    pytest.skip(message)


async def stored_rows(influx: Any, query: str, fields: Iterable[str], timeout: float = 30.0,  # noqa: ASYNC109
                      message: str | None = None) -> list[dict[str, Any]]:
    """The rows of an InfluxQL query once its first row has a value for every one of ``fields``.

    InfluxDB 1.x keeps each field of a point as a series of its own and writes them into its cache one after
    another: a query that arrives in the middle of a write sees some fields of the newest point and not yet
    the others (an audit row read with its seq but no hash). Waiting for the first non-empty answer is a race.
    """
    wanted = tuple(fields)

    def complete() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = influx.query(query)
        return rows if rows and all(rows[0].get(name) is not None for name in wanted) else None

    return await wait_until(complete, timeout=timeout, ignore=(Exception,),
                            message=message or f"{query}: a row with {', '.join(wanted)}")


class RecordingSink:
    """A pipeline sink that keeps every batch it is given (and ignores statuses)."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def on_batch(self, batch: Batch) -> None:
        self.batches.append(batch)

    def on_status(self, status: DeviceStatus) -> None:
        pass


async def _take_and_never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.read(4096):
            pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def silent_servers(count: int) -> AsyncIterator[list[int]]:
    """`count` TCP servers on 127.0.0.1 that accept, take every request and never answer (a gateway whose
    serial side is dead, a device whose firmware hangs): their ports, each bound by its server."""
    servers = [await asyncio.start_server(_take_and_never_answer, "127.0.0.1", 0) for _ in range(count)]
    try:
        yield [server.sockets[0].getsockname()[1] for server in servers]
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
