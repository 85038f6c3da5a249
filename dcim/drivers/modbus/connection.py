"""One Modbus TCP connection per host:port, shared by every unit id behind it (a gateway).

The socket is `transport.ModbusTcpClient` (MBAP framing, answers matched by transaction id); this module
decides when to connect, how long to back off (jittered, doubling, capped), how long a request may take (the
device's `timeout`, per attempt) and how often to retry (the device's `retries`). So one dead gateway costs
its own devices at most timeout x (retries + 1) per poll and never touches other connections.

While a reconnect is backing off, requests fail at once with DeviceUnreachable instead of queueing: the
poller marks the device offline and tries again next interval.

The semaphore (`max_in_flight`, 1 unless configured) bounds how many requests of the devices behind this
gateway are on the wire at once: many gateways and PLCs answer only one transaction at a time, so more than
one is for servers that are known to take several.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from pymodbus.exceptions import ConnectionException, ModbusException

from dcim.core.backoff import Backoff
from dcim.core.logs import truncate
from dcim.core.metrics import REGISTRY
from dcim.drivers.base import DriverContext
from dcim.drivers.errors import BadResponse, DeviceTimeout, DeviceUnreachable, DriverError
from dcim.drivers.modbus.config import ModbusDevice
from dcim.drivers.modbus.transport import Answer, ModbusTcpClient

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


class ExceptionCode(BadResponse):
    """The device answered with a Modbus exception code."""

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        super().__init__(f"{what}: exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")


class ModbusConnection:
    def __init__(
        self, host: str, port: int, *, max_in_flight: int = 1, backoff: Backoff | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.backoff = backoff or Backoff(initial=0.1, maximum=10.0)
        self.users: set[str] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
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
        async with self._slots:
            for _attempt in range(retries + 1):
                try:
                    async with asyncio.timeout(timeout):
                        client = await self.ensure_connected()
                        response = await call(client)
                    raise_if_cancelled(cancels)
                except TimeoutError:
                    self._silent += 1
                    if self._client is None:
                        if not self._connect_lock.locked():
                            self._failed(f"connecting to {self.name} timed out")
                        error = DeviceUnreachable(f"connecting to {self.name} timed out")
                    elif not self._client.connected:
                        error = self._lost(f"connection to {self.name} lost")
                    else:
                        error = DeviceTimeout(f"{what}: no answer within {timeout:g} s")
                        if self._silent >= SILENT_LIMIT:
                            # Perhaps a half-open socket: open a fresh one for the next attempt. TCP itself
                            # worked, so no backoff (a unit that is merely silent keeps timing out).
                            log.debug("modbus connection silent, reopening", gateway=self.name,
                                     unanswered=self._silent)
                            self._silent = 0
                            self._drop()
                    REQUESTS.inc(gateway=self.name, result="timeout")
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
        raise error

    def _lost(self, error: str) -> DeviceUnreachable:
        if self._client is not None:
            log.warning("modbus connection lost", gateway=self.name, error=error)
        self._drop()
        self._failed(error)
        return DeviceUnreachable(error)

    async def close(self) -> None:
        self._drop()


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
