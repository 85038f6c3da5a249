"""etcd through the `aetcd` client (gRPC, etcd v3 API): one client at a time on one endpoint, the next
endpoint when it stops answering, every call bounded by a timeout.

aetcd talks to a single host:port; an etcd cluster has several members and any of them serves every call
(linearizable reads and writes go through the raft leader behind it). So this wrapper keeps the member list
and moves on when a call fails or times out: a dead member costs one timeout at most, not the lease.
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


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


class Etcd:
    def __init__(self, endpoints: list[str], timeout: float) -> None:
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.timeout = timeout
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
            client = aetcd.Client(host=host, port=port, timeout=max(1, math.ceil(self.timeout)))
            await asyncio.wait_for(client.connect(), self.timeout)
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
            # Closed in the background, never awaited here: closing a client whose member died can hang
            # (and a timeout's cancellation waits for it), and the caller is renewing the lease.
            task = asyncio.get_running_loop().create_task(_close(old), name="etcd-close")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def call(self, op: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """`op` on the current endpoint, then on each other one once: EngineError when none answers."""
        last: BaseException | None = None
        for _ in range(len(self.endpoints)):
            client: aetcd.Client | None = None
            try:
                client = await self.client()
                return await asyncio.wait_for(op(client), self.timeout)
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
