"""Small helpers for tests: wait for a condition with a deadline instead of sleeping.

    from tests.helpers import wait_until
    rows = await wait_until(lambda: influx.query("SELECT * FROM cdu"), timeout=10)

The predicate may be a plain function or return an awaitable; its first truthy result is returned.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

import pytest

from tests.servers import find_binary, free_port

__all__ = ["free_port", "require_binary", "wait_until", "wait_until_sync"]

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
