"""A bounded, durable outbox on disk: what waits for a broker, a database or a hook that is away.

    outbox = Outbox(state_dir / "mqtt.sqlite", name="mqtt", max_items=200_000, writer=writer)
    await outbox.open()
    outbox.put("dcim/hall-1/cdu/cdu-1", payload, priority=1)   # never blocks: buffered, then written
    items = await outbox.take(500)     # waits until something is there; oldest first, priority 0 first
    ...send them...
    await outbox.ack(items)            # only now are they gone
    await outbox.close()               # writes what is still buffered

One consumer per outbox: `take` returns the oldest unacknowledged items, the same ones again until they are
acknowledged, so a consumer that fails to send simply takes again (at-least-once).

Priority 0 (alarms, status) goes before priority 1 (bulk telemetry). When the bound is reached, the oldest
items of the lowest priority are dropped, counted in `dropped` and logged: alarms outlive telemetry.

SQLite runs on the process's one SQLite writer thread (dcim.core.sqlite; without a `writer` the outbox
makes one of its own), so the event loop never waits on the disk; `put` only appends to a buffer in
memory that the writer task (`run`) moves to disk in batches.

A disk that refuses writes (full, or failing) never stops the caller: the outbox is then `degraded`. What
is put stays in memory, bounded by `memory_max_bytes` (the oldest low-priority items are dropped first,
counted like the drops on disk), and `take` serves it from there, so alarms and status still go out. The
writer task retries with backoff; once a write succeeds, what is in memory is on disk again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from dcim.core.backoff import Backoff
from dcim.core.metrics import REGISTRY
from dcim.core.sqlite import Database, SqliteWriter

log = structlog.get_logger(__name__)

DEPTH = REGISTRY.gauge("dcim_outbox_depth", "Items waiting in an outbox", ("outbox",))
DROPPED = REGISTRY.counter("dcim_outbox_dropped_total", "Items dropped because an outbox was full", ("outbox",))
DEGRADED = REGISTRY.gauge("dcim_outbox_degraded", "1 while an outbox's disk refuses writes", ("outbox",))
WRITE_ERRORS = REGISTRY.counter("dcim_outbox_write_errors_total", "Failed outbox writes (disk full, I/O error)",
                                ("outbox",))

# Besides the payload and key: what an item in memory costs, roughly (object headers, the deque slot).
_ITEM_OVERHEAD = 120
# Errors that mean "the disk did not take it": kept in memory and retried, never raised to the caller.
DISK_ERRORS = (sqlite3.Error, OSError)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
"""


@dataclass(frozen=True, slots=True)
class Item:
    id: int  # negative: still in memory (the disk refused it)
    key: str
    payload: bytes
    priority: int
    retain: bool = False


class ItemQueue(Protocol):
    """What a consumer sees of its queue: an `Outbox`, or its cursor on a shared journal (dcim.core.journal)."""

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


def _size(item: Item) -> int:
    return len(item.payload) + len(item.key) + _ITEM_OVERHEAD


class Outbox:
    def __init__(self, path: Path | str, *, name: str, max_items: int, writer: SqliteWriter | None = None,
                 memory_max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.name = name
        self.max_items = max_items
        self.memory_max_bytes = memory_max_bytes
        self.dropped = 0
        self.put_total = 0  # items put since start
        self._writer = writer
        self._own_writer = writer is None
        self._db: Database | None = None
        self._on_disk = 0
        # Put, not yet on disk: per priority, oldest first. Items carry negative ids.
        self._buffer: dict[int, deque[Item]] = {}
        self._buffered = 0
        self._buffered_bytes = 0
        self._next_id = -1
        # Acknowledged but still on disk: the delete failed (full disk) and is retried with the next write.
        self._acked: set[int] = set()
        self._error = ""  # set while items are held in memory because the disk refused them
        self._disk_failing = False  # from a refused write to the next one that succeeds (for the log)
        self._retry = Backoff(initial=0.5, maximum=10.0)
        self._wake = asyncio.Event()
        self._available = asyncio.Event()
        self._written = asyncio.Event()
        self._full_logged = False
        self._memory_full_logged = False
        self._writing = False

    @property
    def depth(self) -> int:
        return max(0, self._on_disk - len(self._acked)) + self._buffered

    def views(self) -> list[Outbox]:
        """The consumers' views (one: itself), as a journal lists its cursors."""
        return [self]

    @property
    def degraded(self) -> bool:
        """True from a write the disk refused to the next one it takes. Not cleared when what was kept in
        memory went out from there: the disk is no better for it, and the gauge would flap with every poll."""
        return self._disk_failing

    async def open(self) -> None:
        if self._writer is None:
            self._writer = SqliteWriter(name=f"outbox-{self.name}")
        self._db = self._writer.database(self.path)
        self._on_disk = await self._db.call(_open)
        if self._on_disk:
            log.info("outbox has items from before", outbox=self.name, items=self._on_disk)
            self._available.set()
        REGISTRY.add_collector(self._collect)

    def _collect(self) -> None:
        DEPTH.set(self.depth, outbox=self.name)
        DEGRADED.set(1 if self._disk_failing else 0, outbox=self.name)

    # ---- putting ---------------------------------------------------------------------------------------

    def put(self, key: str, payload: bytes, priority: int = 1, *, retain: bool = False,
            also: Iterable[str] = ()) -> None:
        if also:
            raise ValueError(f"outbox {self.name} has one consumer; {list(also)} share a journal (dcim.core.journal)")
        self.put_total += 1
        item = Item(self._next_id, key, payload, priority, retain)
        self._next_id -= 1
        self._buffer.setdefault(priority, deque()).append(item)
        self._buffered += 1
        self._buffered_bytes += _size(item)
        if self._buffered_bytes > self.memory_max_bytes:
            self._shed()
        self._wake.set()
        if self._error:
            self._available.set()  # `take` serves from memory while the disk is away

    def _shed(self) -> None:
        """Over the memory bound (the disk has not taken writes for a while): drop the oldest items of
        the lowest priority until under it."""
        dropped = 0
        for priority in sorted(self._buffer, reverse=True):
            queue = self._buffer[priority]
            while queue and self._buffered_bytes > self.memory_max_bytes:
                self._buffered_bytes -= _size(queue.popleft())
                self._buffered -= 1
                dropped += 1
        self._count_dropped(dropped)
        if dropped and not self._memory_full_logged:
            log.warning("outbox memory bound reached while the disk refuses writes: dropping the oldest "
                        "low-priority items", outbox=self.name, memory_max_bytes=self.memory_max_bytes)
            self._memory_full_logged = True

    def _count_dropped(self, count: int) -> None:
        if count:
            self.dropped += count
            DROPPED.inc(count, outbox=self.name)

    def _unbuffer(self) -> list[Item]:
        batch = [item for priority in sorted(self._buffer) for item in self._buffer[priority]]
        self._buffer = {}
        self._buffered = 0
        self._buffered_bytes = 0
        return batch

    def _rebuffer(self, batch: Iterable[Item]) -> None:
        """Put a batch the disk refused back in front of what was put meanwhile."""
        by_priority: dict[int, list[Item]] = {}
        for item in batch:
            by_priority.setdefault(item.priority, []).append(item)
        for priority, items in by_priority.items():
            self._buffer.setdefault(priority, deque()).extendleft(reversed(items))
            self._buffered += len(items)
            self._buffered_bytes += sum(_size(i) for i in items)
        if self._buffered_bytes > self.memory_max_bytes:
            self._shed()

    # ---- the writer task -------------------------------------------------------------------------------

    async def run(self) -> None:
        """The writer task: moves buffered items to disk until cancelled (then `close` writes the rest).
        It never stops on a disk error: it keeps the items in memory and retries with backoff."""
        while True:
            if self._error:
                await asyncio.sleep(self._retry.next())
            else:
                await self._wake.wait()
            await self._write_buffer()

    async def _write_buffer(self) -> None:
        self._wake.clear()
        acked = sorted(self._acked)
        if not self._buffered and not acked:
            # Nothing held in memory any more (it went out from there): not degraded, and the next put
            # tries the disk again. The "writable again" message waits for a write that succeeds.
            self._error = ""
            return
        assert self._db is not None, f"outbox {self.name} is not open"
        batch = self._unbuffer()
        rows = [(i.priority, i.key, i.payload, int(i.retain)) for i in batch]
        self._writing = True
        try:
            # Submitted before the first await that could let a `take` in: the writer runs jobs in
            # order, so a `take` issued after this sees the batch.
            # `_on_disk` never counts fewer rows than the file holds when this job runs (rows are only
            # added by this task, one batch at a time, and removed by jobs queued before), so the job needs
            # no count(*) (milliseconds at a large backlog) unless the bound may be reached.
            write = await self._db.submit(_insert, rows, acked, self.max_items, self._on_disk)
        except BaseException:
            self._writing = False
            self._rebuffer(batch)
            raise
        # Settled by a callback: also when this task is cancelled while the write runs on.
        write.add_done_callback(lambda done: self._written_back(done, batch, acked))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            if not write.done():
                # Let a submitted write finish, so `close` neither loses nor repeats it.
                with contextlib.suppress(Exception):
                    await write
            raise
        except Exception:
            pass  # kept in memory and counted by the callback: the outbox lives on

    def _written_back(self, done: asyncio.Future[tuple[int, int]], batch: list[Item], acked: list[int]) -> None:
        self._writing = False
        self._written.set()
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is not None:
            self._rebuffer(batch)
            self._degrade(error)
            return
        dropped, deleted = done.result()
        self._acked.difference_update(acked)
        self._on_disk += len(batch) - dropped - deleted
        self._error = ""
        if self._disk_failing:
            log.info("outbox disk writable again", outbox=self.name, written=len(batch),
                     dropped_total=self.dropped)
            self._disk_failing = False
            self._retry.reset()
            self._memory_full_logged = False
        if dropped:
            self._count_dropped(dropped)
            if not self._full_logged:
                log.warning("outbox full: dropping the oldest low-priority items",
                            outbox=self.name, max_items=self.max_items, dropped=dropped)
                self._full_logged = True
        elif self._full_logged and self.depth < self.max_items * 0.9:
            log.info("outbox below its bound again", outbox=self.name, dropped_total=self.dropped)
            self._full_logged = False
        if self._buffered:
            self._wake.set()  # put while this batch was being written
        self._available.set()

    def _degrade(self, error: BaseException) -> None:
        WRITE_ERRORS.inc(outbox=self.name)
        if not self._disk_failing:
            self._disk_failing = True
            log.error("outbox disk refuses writes: keeping items in memory and retrying", outbox=self.name,
                      error=str(error), in_memory=self._buffered)
        self._error = str(error) or type(error).__name__
        self._available.set()

    # ---- the consumer ----------------------------------------------------------------------------------

    async def take(self, limit: int) -> list[Item]:
        while True:
            items: list[Item] = []
            if self.depth - self._buffered > 0:
                assert self._db is not None, f"outbox {self.name} is not open"
                try:
                    rows = await self._db.call(_select, limit + len(self._acked))
                except DISK_ERRORS as err:
                    self._degrade(err)
                else:
                    items = [Item(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows
                             if r[0] not in self._acked]
                    if not rows and not self._writing:
                        self._on_disk = 0  # (a write in flight adds its rows when it is done)
            if self._error and self._buffered:
                # The disk is away: what waits in memory goes out from there, after what is on disk
                # (older), alarms and status first.
                for priority in sorted(self._buffer):
                    items.extend(list(self._buffer[priority])[:limit])
                items.sort(key=lambda i: i.priority)
            if items:
                return items[:limit]
            self._available.clear()
            await self._available.wait()

    async def ack(self, items: Sequence[Item]) -> None:
        """Forget `items` (taken and sent). Never raises on a disk error: the delete is retried."""
        in_memory = {i.id for i in items if i.id < 0}
        on_disk = [i.id for i in items if i.id > 0 and i.id not in self._acked]
        if in_memory:
            # Still in the buffer unless a write took it to disk meanwhile (then it goes out again).
            for priority, queue in self._buffer.items():
                kept = deque(i for i in queue if i.id not in in_memory)
                gone = len(queue) - len(kept)
                if gone:
                    self._buffered -= gone
                    self._buffered_bytes -= sum(_size(i) for i in queue if i.id in in_memory)
                    self._buffer[priority] = kept
        if not on_disk:
            return
        assert self._db is not None, f"outbox {self.name} is not open"
        try:
            removed: int = await self._db.call(_delete, on_disk)
        except DISK_ERRORS as err:
            self._acked.update(on_disk)
            self._degrade(err)
            return
        self._on_disk = max(0, self._on_disk - removed)

    async def flush(self) -> None:
        """Wait until everything put so far is on disk, or the disk refused it (the writer task must be
        running): then the items wait in memory, and a shutdown need not wait for the disk."""
        # Also while a batch is being written: it has left the buffer but is not on disk yet.
        while (self._buffered or self._writing) and not self._error:
            self._written.clear()
            if self._buffered:
                self._wake.set()
            await self._written.wait()

    async def close(self) -> None:
        if self._db is None:
            return
        if self._buffered or self._acked or self._writing:
            # Shielded: closing during a cancellation must still put the buffer on disk.
            await asyncio.shield(self._write_buffer())
        if self._buffered:
            log.error("outbox closed while its disk refuses writes: items in memory are lost",
                      outbox=self.name, lost=self._buffered, error=self._error)
        await self._db.close()
        self._db = None
        if self._own_writer and self._writer is not None:
            await self._writer.close()
            self._writer = None


# ---- jobs on the writer thread -----------------------------------------------------------------------

def _open(db: sqlite3.Connection) -> int:
    # Statement by statement: executescript would commit the writer's transaction.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    count: int = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    return count


def _insert(db: sqlite3.Connection, rows: list[tuple[int, str, bytes, int]], acked: list[int],
            max_items: int, at_most: int) -> tuple[int, int]:
    """Delete the acknowledged ids, insert `rows`, drop the oldest low-priority rows over `max_items`.
    `at_most`: no fewer rows than the table holds before this job."""
    deleted = 0
    if acked:
        before = db.total_changes
        db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in acked])
        deleted = db.total_changes - before
    if not rows:
        return 0, deleted
    db.executemany("INSERT INTO outbox (priority, key, payload, retain) VALUES (?, ?, ?, ?)", rows)
    if at_most - deleted + len(rows) <= max_items:
        return 0, deleted
    count: int = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    excess = count - max_items
    if excess > 0:
        db.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY priority DESC, id ASC LIMIT ?)",
            (excess,),
        )
    return max(0, excess), deleted


def _select(db: sqlite3.Connection, limit: int) -> list[tuple[int, str, bytes, int, int]]:
    rows: list[tuple[int, str, bytes, int, int]] = db.execute(
        "SELECT id, key, payload, priority, retain FROM outbox ORDER BY priority, id LIMIT ?", (limit,)
    ).fetchall()
    return rows


def _delete(db: sqlite3.Connection, ids: list[int]) -> int:
    before = db.total_changes
    db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
    return db.total_changes - before
