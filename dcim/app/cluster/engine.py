"""etcd through the `aetcd` client (gRPC, etcd v3 API): one client at a time on one endpoint, the next
endpoint when it stops answering, every call bounded by a timeout.

aetcd talks to a single host:port; an etcd cluster has several members and any of them serves every call
(linearizable reads and writes go through the raft leader behind it). So this wrapper keeps the member list
and moves on when a call fails or times out: a dead member costs one timeout at most, not the lease.

Every call runs in a task of its own (`bounded`), awaited with `asyncio.wait`, never `asyncio.wait_for`:
on Python 3.11 `wait_for` drops a cancellation that lands as its inner call completes (gh-86296), and aetcd
uses it inside (connect, watch creation); a session task that swallowed its cancellation that way ran on
forever and the session never ended. A call whose caller is cancelled, or that outlives its timeout, is
cancelled and left behind, never waited for: a gRPC call that is slow to cancel cannot hold the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aetcd
import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


class EngineError(Exception):
    """No etcd endpoint answered the call in time."""


_ABANDONED: set[asyncio.Task[Any]] = set()


def _forget(task: asyncio.Task[Any]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a call given up on may fail later without a warning for it


async def bounded(call: Awaitable[T], seconds: float) -> T:
    """`call`, at most `seconds` long (TimeoutError past that). The call runs in a task of its own: when
    it times out or the caller is cancelled it is cancelled and abandoned, not awaited, and a cancellation
    of the caller always reaches the caller (unlike `asyncio.wait_for` on Python 3.11)."""
    task: asyncio.Task[T] = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        _abandon(task)
        raise
    if not done:
        _abandon(task)
        raise TimeoutError
    if task.cancelled():
        # Cancelled from the inside, not by our caller: grpc cancels the calls in flight on a channel that is
        # closed (another task gave the client up for the next endpoint). Its CancelledError would end the
        # caller as if the caller had been cancelled: the lease renewal task then stopped without a word, and
        # a task group does not notice a child that ends cancelled. A failed call, to be tried again.
        raise ConnectionAbortedError("the etcd call was cancelled: its client was closed")
    return task.result()


def _abandon(task: asyncio.Task[Any]) -> None:
    task.cancel()
    _ABANDONED.add(task)  # a strong reference until it is done (the loop keeps only weak ones)
    task.add_done_callback(_forget)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


class Etcd:
    def __init__(self, endpoints: list[str], timeout: float,
                 credentials: tuple[str | None, str | None] = (None, None)) -> None:
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self.username, self.password = credentials
        self.index = 0
        self._client: aetcd.Client | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        host, port = self.endpoints[self.index % len(self.endpoints)]
        return f"{host}:{port}"

    async def client(self) -> aetcd.Client:
        if self._client is None:
            host, port = self.endpoints[self.index % len(self.endpoints)]
            client = aetcd.Client(host=host, port=port, timeout=max(1, math.ceil(self.timeout)),
                                  username=self.username, password=self.password)
            try:
                await bounded(client.connect(), self.timeout)
            except BaseException:
                self._close_later(client)
                raise
            if self._client is not None:  # another task connected meanwhile: one client at a time
                self._close_later(client)
            else:
                self._client = client
        return self._client

    async def move(self, client: aetcd.Client | None) -> None:
        """Give up `client` (if it is still the current one) for the next endpoint."""
        if client is not None and client is not self._client:
            return
        old, self._client = self._client, None
        self.index += 1
        log.info("etcd: moving to the next endpoint", endpoint=self.endpoint)
        if old is not None:
            self._close_later(old)

    def _close_later(self, client: aetcd.Client) -> None:
        # Closed in the background, never awaited here: closing a client whose member died can hang, and the
        # caller is renewing the lease.
        task = asyncio.get_running_loop().create_task(_close(client), name="etcd-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def call(self, op: Callable[[aetcd.Client], Awaitable[T]], *, tries: int | None = None) -> T:
        """`op` on the current endpoint, then on each other one once (or on `tries` endpoints): EngineError when
        none answers. A failed endpoint is left for the next one, also for the next call."""
        last: BaseException | None = None
        for _ in range(min(tries or len(self.endpoints), len(self.endpoints))):
            client: aetcd.Client | None = None
            try:
                client = await self.client()
                return await bounded(op(client), self.timeout)
            except (TimeoutError, aetcd.ClientError, OSError) as err:
                last = err
                await self.move(client)
            except Exception as err:  # grpc's own errors where aetcd does not map them
                if type(err).__module__.startswith(("grpc", "aetcd")):
                    last = err
                    await self.move(client)
                else:
                    raise
        raise EngineError(f"no etcd endpoint answered ({type(last).__name__}: {last})")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            task = asyncio.get_running_loop().create_task(_close(client), name="etcd-close")
            self._closing.add(task)
        # Bounded without cancelling (asyncio.wait, not wait_for): a close that hangs is left behind.
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=self.timeout)


async def _close(client: aetcd.Client) -> None:
    with contextlib.suppress(Exception):
        await client.close()


async def transact(client: aetcd.Client, compare: list[Any], success: list[Any]) -> tuple[bool, list[Any]]:
    """One transaction: (whether every comparison held, the responses of `success`). aetcd wants a list
    for the failure branch even when it is empty."""
    ok, responses = await client.transaction(compare=compare, success=success, failure=[])
    return bool(ok), list(responses)


def txn_revision(responses: list[Any]) -> int:
    """The revision a transaction's first put or delete was made at (the key's create revision for a create)."""
    for response in responses:
        kind = response.WhichOneof("response") if hasattr(response, "WhichOneof") else None
        if kind is not None:
            return int(getattr(response, kind).header.revision)
    return 0
