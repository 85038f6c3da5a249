"""What the durable queues of dcim have in common: an item, what a consumer sees of its queue, the metrics.

Two kinds of queue implement `ItemQueue`, both in dcim.core.journal: a `Cursor` on the journal that the
publisher and the in-process ingest share, and an `Outbox` (a journal with one consumer: a notification
hook's, or an ingest's that takes from the broker). Both are bounded, durable and at-least-once:

    items = await queue.take(500)      # waits until something is there; oldest first, priority 0 first
    ...send them...
    await queue.ack(items)             # only now are they gone

`take` returns the oldest unacknowledged items, the same ones again until they are acknowledged, so a
consumer that fails to send simply takes again. Priority 0 (alarms, status) goes before priority 1 (bulk
telemetry); past the bound, the oldest items of the lowest priority are dropped, counted and logged: alarms
outlive telemetry. A disk that refuses writes (full, or failing) never stops the caller: the queue is then
`degraded`, what is put stays in memory within a bound and is served from there, and the writer retries.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Protocol

from dcim.core.metrics import REGISTRY
from dcim.core.samples import slots_record

DEPTH = REGISTRY.gauge("dcim_outbox_depth", "Items waiting in an outbox", ("outbox",))
DROPPED = REGISTRY.counter("dcim_outbox_dropped_total", "Items dropped because an outbox was full", ("outbox",))
DEGRADED = REGISTRY.gauge("dcim_outbox_degraded", "1 while an outbox's disk refuses writes", ("outbox",))
WRITE_ERRORS = REGISTRY.counter("dcim_outbox_write_errors_total", "Failed outbox writes (disk full, I/O error)",
                                ("outbox",))

# Errors that mean "the disk did not take it": kept in memory and retried, never raised to the caller.
DISK_ERRORS = (sqlite3.Error, OSError)


@slots_record
class Item:
    id: int  # negative: still in memory (the disk refused it)
    key: str
    payload: bytes
    priority: int
    retain: bool = False


class ItemQueue(Protocol):
    """What a consumer sees of its queue: an `Outbox`, or its cursor on a shared journal (both dcim.core.journal)."""

    @property
    def name(self) -> str: ...

    @property
    def depth(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def put_total(self) -> int: ...

    @property
    def degraded(self) -> bool: ...

    def put(self, key: str, payload: bytes, priority: int = 1, *, retain: bool = False,
            also: Iterable[str] = ()) -> None: ...

    async def take(self, limit: int) -> list[Item]: ...

    async def ack(self, items: Sequence[Item]) -> None: ...

    async def flush(self) -> None: ...
