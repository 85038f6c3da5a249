"""A bounded, durable outbox on disk: what waits for a broker, a database or a hook that is away.

    outbox = Outbox(state_dir / "mqtt.sqlite", name="mqtt", max_items=200_000)
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

SQLite runs on one worker thread of its own, so the event loop never waits on the disk; `put` only appends
to a list that the writer task (`run`) moves to disk in batches.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from dcim.core.metrics import REGISTRY

log = structlog.get_logger(__name__)

DEPTH = REGISTRY.gauge("dcim_outbox_depth", "Items waiting in an outbox", ("outbox",))
DROPPED = REGISTRY.counter("dcim_outbox_dropped_total", "Items dropped because an outbox was full", ("outbox",))

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
    id: int
    key: str
    payload: bytes
    priority: int
    retain: bool = False


class Outbox:
    def __init__(self, path: Path | str, *, name: str, max_items: int) -> None:
        self.path = Path(path)
        self.name = name
        self.max_items = max_items
        self.dropped = 0
        self._on_disk = 0
        self._buffer: list[tuple[int, str, bytes, int]] = []
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._buffered = asyncio.Event()
        self._available = asyncio.Event()
        self._written = asyncio.Event()
        self._full_logged = False
        self._writing = False

    @property
    def depth(self) -> int:
        return self._on_disk + len(self._buffer)

    async def _call(self, fn: Any, *args: Any) -> Any:
        assert self._executor is not None, f"outbox {self.name} is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"outbox-{self.name}")
        self._on_disk = await self._call(self._open_db)
        if self._on_disk:
            log.info("outbox has items from before", outbox=self.name, items=self._on_disk)
            self._available.set()
        REGISTRY.add_collector(lambda: DEPTH.set(self.depth, outbox=self.name))

    def _open_db(self) -> int:
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db
        count: int = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return count

    def put(self, key: str, payload: bytes, priority: int = 1, *, retain: bool = False) -> None:
        self._buffer.append((priority, key, payload, int(retain)))
        self._buffered.set()

    async def run(self) -> None:
        """The writer task: moves buffered items to disk until cancelled (then `close` writes the rest)."""
        while True:
            await self._buffered.wait()
            await self._write_buffer()

    async def _write_buffer(self) -> None:
        self._buffered.clear()
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        self._on_disk += len(batch)
        self._writing = True
        # Submitted at once (not in a task that starts later): the worker runs jobs in order, so a `take`
        # issued after this sees the batch.
        assert self._executor is not None, f"outbox {self.name} is not open"
        write = asyncio.get_running_loop().run_in_executor(self._executor, self._insert, batch)
        cancelled: asyncio.CancelledError | None = None
        try:
            try:
                dropped = await asyncio.shield(write)
            except asyncio.CancelledError as err:
                # The worker thread goes on with an insert it has started: let it finish, so that a
                # cancelled write is neither lost nor written a second time by `close`.
                cancelled = err
                dropped = await write
        except Exception:
            # Not written: put it back in front, so nothing is lost.
            self._on_disk -= len(batch)
            self._buffer[:0] = batch
            raise
        finally:
            self._writing = False
        if dropped:
            self._on_disk -= dropped
            self.dropped += dropped
            DROPPED.inc(dropped, outbox=self.name)
            if not self._full_logged:
                log.warning("outbox full: dropping the oldest low-priority items",
                            outbox=self.name, max_items=self.max_items, dropped=dropped)
                self._full_logged = True
        elif self._full_logged and self.depth < self.max_items * 0.9:
            log.info("outbox below its bound again", outbox=self.name, dropped_total=self.dropped)
            self._full_logged = False
        self._available.set()
        self._written.set()
        if cancelled is not None:
            raise cancelled

    def _insert(self, batch: list[tuple[int, str, bytes, int]]) -> int:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN")
        db.executemany("INSERT INTO outbox (priority, key, payload, retain) VALUES (?, ?, ?, ?)", batch)
        count: int = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        excess = count - self.max_items
        if excess > 0:
            db.execute(
                "DELETE FROM outbox WHERE id IN "
                "(SELECT id FROM outbox ORDER BY priority DESC, id ASC LIMIT ?)",
                (excess,),
            )
        db.execute("COMMIT")
        return max(0, excess)

    async def take(self, limit: int) -> list[Item]:
        while True:
            if self._on_disk:
                rows = await self._call(self._select, limit)
                if rows:
                    return [Item(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]
                self._on_disk = 0
            self._available.clear()
            await self._available.wait()

    def _select(self, limit: int) -> list[tuple[int, str, bytes, int, int]]:
        assert self._db is not None
        rows: list[tuple[int, str, bytes, int, int]] = self._db.execute(
            "SELECT id, key, payload, priority, retain FROM outbox ORDER BY priority, id LIMIT ?", (limit,)
        ).fetchall()
        return rows

    async def ack(self, items: Sequence[Item]) -> None:
        if not items:
            return
        ids = [(item.id,) for item in items]
        removed: int = await self._call(self._delete, ids)
        self._on_disk = max(0, self._on_disk - removed)

    def _delete(self, ids: list[tuple[int]]) -> int:
        assert self._db is not None
        before = self._db.total_changes
        self._db.execute("BEGIN")
        self._db.executemany("DELETE FROM outbox WHERE id = ?", ids)
        self._db.execute("COMMIT")
        return self._db.total_changes - before

    async def flush(self) -> None:
        """Wait until everything put so far is on disk (the writer task must be running)."""
        # Also while a batch is being written: it has left the buffer but is not on disk yet.
        while self._buffer or self._writing:
            self._written.clear()
            if self._buffer:
                self._buffered.set()
            await self._written.wait()

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._buffer:
            # Shielded: closing during a cancellation must still put the buffer on disk.
            await asyncio.shield(self._write_buffer())
        await self._call(self._close_db)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
