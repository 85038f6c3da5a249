"""One durable log on disk, read by several consumers, each through a cursor of its own.

The publisher (to the broker) and the in-process ingest (to the database) take the same readings. With an
outbox each, every reading was written to disk twice, read back twice and deleted twice. The journal
writes it once, with a mark of the consumers it is for; each consumer takes and acknowledges through its
cursor, and a row goes once every consumer it was for has acknowledged it:

    journal = Journal(state_dir / "journal.sqlite", consumers={"mqtt": 200_000, "ingest": 2_000_000},
                      writer=writer)
    await journal.open()
    mqtt, ingest = journal.cursor("mqtt"), journal.cursor("ingest")
    mqtt.put(topic, payload, priority=1, also=("ingest",))   # never blocks: buffered, then written once
    items = await ingest.take(500)      # oldest first, priority 0 first; the same ones until acknowledged
    await ingest.ack(items)             # gone for the ingest; the row stays until the publisher is done too

A cursor is what a consumer sees of its queue (`ItemQueue`, dcim.core.outbox): `put`, `take`, `ack`,
`flush`, `depth`, `dropped`, `degraded`, with at-least-once delivery and the metrics under its own name
(`dcim_outbox_depth{outbox="mqtt"}`). An `Outbox` (below) is a journal with one consumer: the queue of every
other hop (a notification hook, an ingest that takes from the broker), so there is one implementation of
the bound, the priorities, the group commit and the full disk.

What a consumer that keeps up costs: the journal's writer task commits what was put in one transaction
(group commit), and hands each consumer the rows it just wrote, in memory, so `take` reads nothing back
from disk. A consumer that falls behind (a broker or database away) by more than `FRESH_MAX` items reads
from disk, oldest first, until it has caught up.

An acknowledgement is one statement per run of consecutive ids, and `ack` returns once it is on disk; a
row no other consumer waits for is deleted, never updated first. With several consumers, one that keeps up
does not write its acknowledgements itself: they are held up to `ACK_HOLD` seconds for the others to
acknowledge the same rows, and go with the writer's next group commit. A row every consumer acknowledged by
then is deleted in one statement and never updated (an update per consumer cost about a quarter of a row's
time in SQLite). What is held past `ACK_HOLD`, or past `ACK_HOLD_MAX` ids in all, is written as it is: the
row keeps the consumers still to acknowledge it. `flush` and `close` write every acknowledgement held. A
crash loses at most the last `ACK_HOLD` seconds of held acknowledgements: those items are handed out again
after the restart (at least once, as for a send cut off by the crash).

Bounds: each consumer keeps at most its `max_items` rows; past it the oldest of its lowest priority are
dropped for it (counted under its name, logged, and no longer handed out). A disk that refuses writes keeps
what is put in memory within `memory_max_bytes`, serves it from there, and retries.

Only priorities 0 (alarms, status) and 1 (telemetry) exist here; `take` hands out priority 0 first, also
ahead of telemetry written earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import structlog

from dcim.core.backoff import Backoff
from dcim.core.metrics import REGISTRY
from dcim.core.outbox import DEGRADED, DEPTH, DISK_ERRORS, DROPPED, WRITE_ERRORS, Item
from dcim.core.sqlite import Database, SqliteWriter

log = structlog.get_logger(__name__)

PRIORITIES = (0, 1)
# Rows a consumer that keeps up is handed in memory; beyond it (it fell behind) it reads from disk. Above the
# admission's cap of a consumer's backlog (dcim/app/poller.py, 12,000): about 12 MiB of rows at 24 points a row.
FRESH_MAX = 12288
# Rows copied per statement group when an outbox of an earlier version is taken into the journal.
IMPORT_CHUNK = 5000
# How long a consumer's acknowledgements wait for the other consumers' (see the module's docstring), and how
# many may wait in all before they are written as they are.
ACK_HOLD = 2.0
ACK_HOLD_MAX = 100_000
_ITEM_OVERHEAD = 150
_ALL_BITS = (1 << 62) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS consumers (
    name TEXT PRIMARY KEY,
    bit INTEGER NOT NULL UNIQUE
)
"""


class _Entry:
    """What was put and is not on disk yet: `pending` holds the consumers it is still for."""

    __slots__ = ("id", "key", "payload", "pending", "priority", "retain", "size")

    def __init__(self, id_: int, key: str, payload: bytes, priority: int, retain: bool, pending: int) -> None:
        self.id = id_
        self.key = key
        self.payload = payload
        self.priority = priority
        self.retain = retain
        self.pending = pending
        self.size = len(payload) + len(key) + _ITEM_OVERHEAD  # what it holds of the memory bound

    def item(self, id_: int | None = None) -> Item:
        return Item(self.id if id_ is None else id_, self.key, self.payload, self.priority, self.retain)


def _runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted ids (each once) as (first, last) runs of consecutive ids."""
    if not ids:
        return []
    if ids[-1] - ids[0] == len(ids) - 1:
        return [(ids[0], ids[-1])]  # one run: what a consumer that keeps up acknowledges, most often
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


class Cursor:
    """One consumer's view of the journal, with the interface of an `Outbox`."""

    def __init__(self, journal: Journal, name: str, max_items: int) -> None:
        self.journal = journal
        self.name = name
        self.max_items = max_items
        self.mask = 0  # this consumer's bit, known once the journal is open
        self.dropped = 0
        self.put_total = 0  # items put for this consumer since start (by anyone)
        self.on_disk = 0  # rows on disk still pending for this consumer
        self.buffered = 0  # entries in the journal's buffer still pending for this consumer
        # Rows on disk pending for this consumer, in memory, per priority, oldest first (all of them unless
        # `behind`): `take` hands out priority 0 (alarms, status) before priority 1 (telemetry).
        self.fresh: tuple[deque[Item], ...] = tuple(deque() for _ in PRIORITIES)
        self.behind = False
        self._evicted = 0  # the highest id dropped from `fresh` for its bound while behind
        # Acknowledged, not on disk yet: never handed out again. `ack_due` of them go with the next write;
        # the others are held (`_held`: when each acknowledgement came) for the other consumers'.
        self.unsaved_acks: set[int] = set()
        self.ack_due: set[int] = set()
        self._held: deque[tuple[float, list[int]]] = deque()
        self.held = 0  # ids in `_held`
        self.available = asyncio.Event()
        self._masks: dict[tuple[str, ...], int] = {}  # `put`'s mask for the consumers named in `also`

    @property
    def depth(self) -> int:
        # What is being written counts too: between leaving the buffer and arriving on disk it is in neither.
        writing = self.journal.writing.get(self.mask, 0)
        return max(0, self.on_disk - len(self.unsaved_acks)) + self.buffered + writing

    @property
    def degraded(self) -> bool:
        return self.journal.degraded

    def put(self, key: str, payload: bytes, priority: int = 1, *, retain: bool = False,
            also: Iterable[str] = ()) -> None:
        """Put for this consumer and the ones named in `also`: one row for all of them."""
        mask = self.mask
        if also:
            known = self._masks.get(also) if isinstance(also, tuple) else None
            if known is None:
                known_bits = mask != 0
                for name in also:
                    bit = self.journal.cursor(name).mask
                    mask |= bit
                    known_bits = known_bits and bit != 0
                if known_bits and isinstance(also, tuple):
                    self._masks[also] = mask  # the bits are known once the journal is open, and stay
            else:
                mask = known
        self.journal.put(key, payload, priority, retain=retain, mask=mask)

    async def flush(self) -> None:
        await self.journal.flush()

    # ---- taking --------------------------------------------------------------------------------------

    async def take(self, limit: int) -> list[Item]:
        while True:
            items: list[Item] = []
            if self.behind:
                items = await self._take_from_disk(limit)
            else:
                for queue in self.fresh:
                    for item in queue:
                        if len(items) >= limit:
                            break
                        items.append(item)
            if self.journal.error and self.buffered and len(items) < limit:
                # The disk is away: what waits in memory goes out from there, after what is on disk (older),
                # alarms and status first.
                items.extend(self.journal.buffered_for(self.mask, limit - len(items)))
            if items:
                return items
            self.available.clear()
            await self.available.wait()

    async def _take_from_disk(self, limit: int) -> list[Item]:
        db = self.journal.db
        if self._held:
            # Fell behind while holding acknowledgements: written with the next write, not held up to
            # ACK_HOLD while every read from disk has to skip them.
            self.held_due(0.0, everything=True)
            self.journal._wake.set()
        want = limit + len(self.unsaved_acks)
        try:
            rows, top = await db.call(_select, self.mask, want)
        except DISK_ERRORS as err:
            self.journal.degrade(err)
            return []
        items = [Item(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows if r[0] not in self.unsaved_acks]
        if len(rows) < want and self._evicted <= top and self.behind:
            # That was everything pending for this consumer on disk up to `top`; what was written after it is in
            # `fresh`: from now on everything is in memory (what was just read first, until acknowledged).
            fresh: tuple[deque[Item], ...] = tuple(deque() for _ in PRIORITIES)
            for item in items:
                fresh[item.priority].append(item)
            for priority, queue in enumerate(self.fresh):
                fresh[priority].extend(i for i in queue if i.id > top)
            self.fresh = fresh
            self.behind = False
            self._evicted = 0
        return items[:limit]

    def written(self, items: list[Item]) -> None:
        """The journal wrote rows pending for this consumer (in id order)."""
        if not items:
            return
        self.on_disk += len(items)
        fresh = self.fresh
        for item in items:
            fresh[item.priority].append(item)
        over = len(fresh[1]) + len(fresh[0]) - FRESH_MAX
        while over > 0:
            # The oldest telemetry first: the disk has it, `take` reads it back from there.
            self._evicted = max(self._evicted, (fresh[1] or fresh[0]).popleft().id)
            self.behind = True
            over -= 1
        self.available.set()

    # ---- acknowledging -------------------------------------------------------------------------------

    async def ack(self, items: Sequence[Item]) -> None:
        """Forget `items` for this consumer (taken and sent). Never raises on a disk error: retried."""
        in_memory = [i.id for i in items if i.id < 0]
        if in_memory:
            self.journal.ack_buffered(self, in_memory)
        on_disk = sorted({i.id for i in items if i.id > 0 and i.id not in self.unsaved_acks})
        if not on_disk:
            return
        self.forget_fresh(on_disk)
        journal = self.journal
        if len(journal.cursors) > 1 and not self.behind and not journal.error:
            # Held for the other consumers' acknowledgements, written with a later write.
            self.unsaved_acks.update(on_disk)
            journal.hold_acks(self, on_disk)
            return
        # Nobody to wait for, or read back from disk (its next read must not skip over them), or the disk
        # away: on disk now, and then this returns (a hook's outbox acknowledges a page it sent).
        try:
            changed: int = await journal.db.call(_ack, _ALL_BITS ^ self.mask, self.mask, _runs(on_disk))
        except DISK_ERRORS as err:
            self.unsaved_acks.update(on_disk)
            self.ack_due.update(on_disk)
            journal.degrade(err)
            return
        self.on_disk = max(0, self.on_disk - changed)

    def hold(self, due: float, ids: list[int]) -> None:
        self._held.append((due, ids))
        self.held += len(ids)

    def held_due(self, now: float, everything: bool) -> None:
        """Held acknowledgements held past `ACK_HOLD` (all of them if `everything`) become due, unless they
        went to disk meanwhile (every consumer acknowledged their rows)."""
        held, due, unsaved = self._held, self.ack_due, self.unsaved_acks
        while held and (everything or held[0][0] <= now):
            ids = held.popleft()[1]
            self.held -= len(ids)
            due.update(i for i in ids if i in unsaved)

    @property
    def oldest_held(self) -> float | None:
        return self._held[0][0] if self._held else None

    def forget_fresh(self, ids: list[int]) -> None:
        gone = set(ids)
        for queue in self.fresh:
            # Usually the oldest of the queue: taken from its front.
            while queue and queue[0].id in gone:
                gone.discard(queue.popleft().id)
            if not gone:
                return
            kept = [i for i in queue if i.id not in gone]
            if len(kept) != len(queue):
                queue.clear()
                queue.extend(kept)

    def count_dropped(self, count: int) -> None:
        if count:
            self.dropped += count
            DROPPED.inc(count, outbox=self.name)


class Journal:
    def __init__(self, path: Path | str, *, consumers: Mapping[str, int], writer: SqliteWriter | None = None,
                 memory_max_bytes: int = 64 * 1024 * 1024, legacy: Mapping[str, Path] | None = None,
                 name: str = "journal", adopt_outbox_table: bool = False) -> None:
        """`legacy`: per consumer, an outbox file of an earlier version whose rows are taken in at `open`
        (the file is removed). `adopt_outbox_table`: the file at `path` itself may be such an outbox; its rows
        become the (only) consumer's in the same transaction that turns the file into a journal."""
        if not consumers:
            raise ValueError("a journal needs at least one consumer")
        if adopt_outbox_table and len(consumers) != 1:
            raise ValueError("only a journal with one consumer can adopt an outbox table")
        self._adopt = adopt_outbox_table
        self.path = Path(path)
        self.name = name
        self.memory_max_bytes = memory_max_bytes
        self.cursors = {c: Cursor(self, c, bound) for c, bound in consumers.items()}
        self._legacy = dict(legacy or {})
        self._writer = writer
        self._own_writer = writer is None
        self._db: Database | None = None
        # Put, not yet on disk, per priority, oldest first; `_entries` also holds those being written.
        self._buffer: dict[int, deque[_Entry]] = {p: deque() for p in PRIORITIES}
        self._entries: dict[int, _Entry] = {}
        self._buffered_bytes = 0
        self._next_id = -1
        self.error = ""  # set while the disk refuses writes (what was put stays in memory)
        self._disk_failing = False
        self._retry = Backoff(initial=0.5, maximum=10.0)
        self._wake = asyncio.Event()
        self._written = asyncio.Event()
        self._writing = False
        # Per consumer mask: the entries of the write in flight that are for it.
        self.writing: dict[int, int] = {}
        self._full_logged: set[str] = set()
        self._memory_full_logged = False
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ack_everything = False  # the next write takes every acknowledgement held (`flush`, `close`)
        self._acked_by_all: set[int] = set()  # rows every consumer acknowledged, for the next write

    def cursor(self, name: str) -> Cursor:
        try:
            return self.cursors[name]
        except KeyError:
            raise KeyError(f"the journal has no consumer {name!r}") from None

    def views(self) -> list[Cursor]:
        return list(self.cursors.values())

    @property
    def db(self) -> Database:
        assert self._db is not None, f"journal {self.path} is not open"
        return self._db

    @property
    def degraded(self) -> bool:
        return self._disk_failing

    @property
    def dropped(self) -> int:
        return sum(c.dropped for c in self.cursors.values())

    @property
    def _buffered(self) -> int:
        return sum(len(q) for q in self._buffer.values())

    # ---- opening -------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is None:
            self._writer = SqliteWriter(name=f"journal-{self.name}")
        self._db = self._writer.database(self.path)
        found = await self._db.call(_open, list(self.cursors), self._adopt)
        for name, (bit, count) in found.items():
            cursor = self.cursors[name]
            cursor.mask = 1 << bit
            cursor.on_disk = count
            cursor.behind = count > 0
        for name, path in self._legacy.items():
            if name in self.cursors and path.exists():
                await self._import(self.cursors[name], path)
        for cursor in self.cursors.values():
            if cursor.on_disk:
                log.info("journal has items from before", outbox=cursor.name, items=cursor.on_disk)
                cursor.available.set()
        REGISTRY.add_collector(self._collect)

    async def _import(self, cursor: Cursor, path: Path) -> None:
        """Take the rows of an outbox file of an earlier version into the journal for `cursor`, then remove
        the file. A stop in the middle sends the rows copied so far twice (never loses them)."""
        assert self._writer is not None
        legacy = self._writer.database(path)
        copied = 0
        try:
            last = 0
            while True:
                rows = await legacy.call(_legacy_rows, last, IMPORT_CHUNK)
                if not rows:
                    break
                last = rows[-1][0]
                await self.db.call(_insert_rows, [(r[1], r[2], r[3], r[4], cursor.mask) for r in rows])
                copied += len(rows)
        except sqlite3.Error as err:
            log.error("journal: an outbox of an earlier version could not be read; left in place",
                      path=str(path), copied=copied, error=str(err))
            await legacy.close()
            cursor.on_disk += copied
            cursor.behind = cursor.behind or copied > 0
            return
        await legacy.close()
        await asyncio.to_thread(_remove, path)
        cursor.on_disk += copied
        cursor.behind = cursor.behind or copied > 0
        log.info("journal: took in an outbox of an earlier version", outbox=cursor.name, path=str(path),
                 items=copied)

    def _collect(self) -> None:
        for cursor in self.cursors.values():
            DEPTH.set(cursor.depth, outbox=cursor.name)
            DEGRADED.set(1 if self._disk_failing else 0, outbox=cursor.name)

    # ---- putting -------------------------------------------------------------------------------------

    def put(self, key: str, payload: bytes, priority: int = 1, *, retain: bool = False, mask: int) -> None:
        if priority not in PRIORITIES:
            raise ValueError(f"journal priorities are {PRIORITIES}, not {priority}")
        if not mask:
            # Before `open` no consumer has its bit: the row would be for nobody, and lost without a word.
            raise RuntimeError(f"journal {self.path} is not open (or put for no consumer)")
        entry = _Entry(self._next_id, key, payload, priority, retain, mask)
        self._next_id -= 1
        self._buffer[priority].append(entry)
        self._entries[entry.id] = entry
        self._buffered_bytes += entry.size
        for cursor in self.cursors.values():
            if mask & cursor.mask:
                cursor.buffered += 1
                cursor.put_total += 1
                if self.error:
                    cursor.available.set()  # `take` serves from memory while the disk is away
        if self._buffered_bytes > self.memory_max_bytes:
            self._shed()
        self._wake.set()

    def hold_acks(self, cursor: Cursor, ids: list[int]) -> None:
        """`cursor` acknowledged rows on disk (`ids`, now in its `unsaved_acks`): held for the other
        consumers' acknowledgements, up to `ACK_HOLD`."""
        # The rows every other consumer acknowledged already (and not on disk yet) are done with.
        self._acked_by_all.update(set(ids).intersection(*(c.unsaved_acks for c in self.cursors.values()
                                                          if c is not cursor)))
        loop = asyncio.get_running_loop()
        due = loop.time() + ACK_HOLD
        cursor.hold(due, ids)
        if self._ack_timer is None:
            self._ack_timer = loop.call_at(due, self._acks_due)
        if sum(c.held for c in self.cursors.values()) > ACK_HOLD_MAX:
            self._ack_everything = True
            self._wake.set()

    def _acks_due(self) -> None:
        self._ack_timer = None
        self._wake.set()

    def _acks_to_write(self) -> tuple[list[tuple[int, int]], dict[str, tuple[set[int], list[tuple[int, int]]]]]:
        """The acknowledgements the next write takes: the runs of rows every consumer acknowledged (deleted
        in one statement), and per consumer the ids it writes (those rows, its due ones and those held too
        long) with their runs."""
        everything, self._ack_everything = self._ack_everything, False
        now = asyncio.get_running_loop().time()
        for cursor in self.cursors.values():
            cursor.held_due(now, everything)
        common, self._acked_by_all = self._acked_by_all, set()
        common_runs = _runs(sorted(common))
        acks: dict[str, tuple[set[int], list[tuple[int, int]]]] = {}
        for name, cursor in self.cursors.items():
            if cursor.ack_due:
                ids = cursor.ack_due | common
                acks[name] = (ids, _runs(sorted(ids)))
            elif common:
                acks[name] = (common, common_runs)
        return common_runs, acks

    def _arm_ack_timer(self) -> None:
        """Wake the writer when the oldest acknowledgement still held falls due."""
        if self._ack_timer is not None:
            return
        oldest = min((t for c in self.cursors.values() if (t := c.oldest_held) is not None), default=None)
        if oldest is not None:
            self._ack_timer = asyncio.get_running_loop().call_at(oldest, self._acks_due)

    def _unbuffered(self, entries: Sequence[_Entry]) -> dict[int, int]:
        """`entries` left the buffer (written, or dropped). Returns how many of them were pending for each
        consumer (by its mask)."""
        self._buffered_bytes -= sum(e.size for e in entries)
        counts: dict[int, int] = {}
        for cursor in self.cursors.values():
            counts[cursor.mask] = count = sum(1 for e in entries if e.pending & cursor.mask)
            cursor.buffered -= count
        return counts

    def _shed(self) -> None:
        """Over the memory bound (the disk has not taken writes for a while): drop the oldest entries of the
        lowest priority until under it."""
        dropped = 0
        for priority in sorted(self._buffer, reverse=True):
            queue = self._buffer[priority]
            while queue and self._buffered_bytes > self.memory_max_bytes:
                entry = queue.popleft()
                self._unbuffered((entry,))
                del self._entries[entry.id]
                dropped += 1
                for cursor in self.cursors.values():
                    if entry.pending & cursor.mask:
                        cursor.count_dropped(1)
        if dropped and not self._memory_full_logged:
            log.warning("outbox memory bound reached while the disk refuses writes: dropping the oldest "
                        "low-priority items", outbox=self.name, memory_max_bytes=self.memory_max_bytes)
            self._memory_full_logged = True

    def buffered_for(self, mask: int, limit: int) -> list[Item]:
        items: list[Item] = []
        for priority in PRIORITIES:
            for entry in self._buffer[priority]:
                if len(items) >= limit:
                    return items
                if entry.pending & mask:
                    items.append(entry.item())
        return items

    def ack_buffered(self, cursor: Cursor, ids: list[int]) -> None:
        """A consumer acknowledged entries it took from memory (the disk was away)."""
        emptied: set[int] = set()
        for id_ in ids:
            entry = self._entries.get(id_)
            if entry is None or not entry.pending & cursor.mask:
                continue
            in_buffer = not self._writing or entry.id not in self._in_flight
            if in_buffer:
                cursor.buffered -= 1
            entry.pending &= ~cursor.mask
            if not entry.pending and in_buffer:
                emptied.add(entry.id)
        if emptied:
            for priority, queue in self._buffer.items():
                kept = deque(e for e in queue if e.id not in emptied)
                if len(kept) != len(queue):
                    for entry in queue:
                        if entry.id in emptied:
                            self._buffered_bytes -= entry.size
                            del self._entries[entry.id]
                    self._buffer[priority] = kept

    # ---- the writer task ------------------------------------------------------------------------------

    _in_flight: frozenset[int] = frozenset()

    async def run(self) -> None:
        """The writer task: moves what was put to disk until cancelled (then `close` writes the rest). It
        never stops on a disk error: it keeps the entries in memory and retries with backoff."""
        while True:
            if self.error:
                await asyncio.sleep(self._retry.next())
            else:
                await self._wake.wait()
            await self._write_buffer()

    async def _write_buffer(self) -> None:
        self._wake.clear()
        common, acks = self._acks_to_write()
        batch = [e for p in PRIORITIES for e in self._buffer[p]]
        if not batch and not acks:
            self.error = ""
            self._arm_ack_timer()
            self._written.set()  # nothing to write: whoever waits for a write looks again
            return
        db = self.db
        self._buffer = {p: deque() for p in PRIORITIES}
        new = self._unbuffered(batch)
        rows = [(e.priority, e.key, e.payload, int(e.retain), e.pending) for e in batch]
        # What each consumer's bound lets in: the oldest of its lowest priority make room.
        excess = [(c.mask, c.on_disk + new[c.mask] - c.max_items) for c in self.cursors.values()
                  if c.on_disk + new[c.mask] > c.max_items]
        ack_jobs = [(_ALL_BITS ^ self.cursors[n].mask, self.cursors[n].mask, runs) for n, (_, runs) in acks.items()]
        everyone = 0
        for cursor in self.cursors.values():
            everyone |= cursor.mask
        merged = (everyone, common) if common else None
        self._writing = True
        self._in_flight = frozenset(e.id for e in batch)
        self.writing = new
        try:
            write = await db.submit(_write, rows, ack_jobs, excess, merged)
        except BaseException:
            self._writing = False
            self._in_flight = frozenset()
            self.writing = {}
            self._rebuffer(batch)
            raise
        masks = [e.pending for e in batch]
        write.add_done_callback(lambda done: self._written_back(done, batch, masks, acks))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            if not write.done():
                with contextlib.suppress(Exception):
                    await write
            raise
        except Exception:
            pass  # kept in memory by the callback: the journal lives on

    def _written_back(self, done: asyncio.Future[tuple[int, list[int], dict[int, list[int]]]], batch: list[_Entry],
                      masks: list[int], acks: dict[str, tuple[set[int], list[tuple[int, int]]]]) -> None:
        self._writing = False
        self._in_flight = frozenset()
        self.writing = {}
        self._written.set()
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is not None:
            self._rebuffer(batch)
            for name, (ids, _) in acks.items():
                self.cursors[name].ack_due.update(ids)  # with the write that takes the batch back
            self.degrade(error)
            return
        first, changed, dropped = done.result()
        cursors = list(self.cursors.values())
        for name, count in zip(acks, changed, strict=True):
            cursor = self.cursors[name]
            ids = acks[name][0]
            cursor.unsaved_acks.difference_update(ids)
            if cursor.ack_due:
                cursor.ack_due.difference_update(ids)
            cursor.on_disk = max(0, cursor.on_disk - count)
        # Each consumer is handed its rows in one call; a row is one `Item` for all of them.
        handed: list[list[Item]] = [[] for _ in cursors]
        pairs = list(zip(cursors, handed, strict=True))
        entries = self._entries
        for offset, (entry, written) in enumerate(zip(batch, masks, strict=True)):
            entries.pop(entry.id, None)
            row_id = first + offset
            item = Item(row_id, entry.key, entry.payload, entry.priority, entry.retain)
            pending = entry.pending
            for cursor, rows in pairs:
                mask = cursor.mask
                if not written & mask:
                    continue
                if pending & mask:
                    rows.append(item)
                else:
                    # Acknowledged from memory while being written: the row still says pending. Settled with
                    # the next write, and never handed out again meanwhile.
                    cursor.on_disk += 1
                    cursor.unsaved_acks.add(row_id)
                    cursor.ack_due.add(row_id)
                    self._wake.set()
        for cursor, rows in pairs:
            cursor.written(rows)
        for cursor in cursors:
            gone = dropped.get(cursor.mask, [])
            count = len(gone)
            if count:
                # Not handed out any more, whether written just now or before.
                cursor.forget_fresh(gone)
                cursor.on_disk = max(0, cursor.on_disk - count)
                cursor.count_dropped(count)
                if cursor.name not in self._full_logged:
                    log.warning("outbox full: dropping the oldest low-priority items", outbox=cursor.name,
                                max_items=cursor.max_items, dropped=count)
                    self._full_logged.add(cursor.name)
            elif cursor.name in self._full_logged and cursor.depth < cursor.max_items * 0.9:
                log.info("outbox below its bound again", outbox=cursor.name, dropped_total=cursor.dropped)
                self._full_logged.discard(cursor.name)
        self.error = ""
        if self._disk_failing:
            log.info("outbox disk writable again", outbox=self.name, written=len(batch), dropped_total=self.dropped)
            self._disk_failing = False
            self._retry.reset()
            self._memory_full_logged = False
        if self._buffered:
            self._wake.set()
        self._arm_ack_timer()

    def _rebuffer(self, batch: Iterable[_Entry]) -> None:
        """Put a batch the disk refused back in front of what was put meanwhile."""
        by_priority: dict[int, list[_Entry]] = {}
        for entry in batch:
            if not entry.pending:
                self._entries.pop(entry.id, None)  # acknowledged by everyone from memory meanwhile
                continue
            by_priority.setdefault(entry.priority, []).append(entry)
            self._buffered_bytes += entry.size
            for cursor in self.cursors.values():
                if entry.pending & cursor.mask:
                    cursor.buffered += 1
        for priority, entries in by_priority.items():
            self._buffer[priority].extendleft(reversed(entries))
        if self._buffered_bytes > self.memory_max_bytes:
            self._shed()

    def degrade(self, error: BaseException) -> None:
        for cursor in self.cursors.values():
            WRITE_ERRORS.inc(outbox=cursor.name)
        if not self._disk_failing:
            self._disk_failing = True
            # The outbox's words: what an operator's log alert looks for.
            log.error("outbox disk refuses writes: keeping items in memory and retrying", outbox=self.name,
                      path=str(self.path), error=str(error), in_memory=self._buffered)
        self.error = str(error) or type(error).__name__
        for cursor in self.cursors.values():
            cursor.available.set()

    async def flush(self) -> None:
        """Wait until everything put so far, and every acknowledgement made so far, is on disk, or the disk
        refused it (the writer task must be running): then it waits in memory, and a shutdown need not wait
        for the disk."""
        while (self._buffered or self._writing) and not self.error:
            self._written.clear()
            if self._buffered:
                self._wake.set()
            await self._written.wait()
        if self._acks_unsaved and not self.error:
            # One write for the acknowledgements made so far: those the consumers go on making meanwhile
            # (a drain at shutdown) go with later writes, or `close`.
            self._written.clear()
            self._ack_everything = True
            self._wake.set()
            await self._written.wait()

    @property
    def _acks_unsaved(self) -> bool:
        return any(c.unsaved_acks for c in self.cursors.values())

    async def close(self) -> None:
        if self._db is None:
            return
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._buffered or self._writing or self._acks_unsaved:
            # Shielded: closing during a cancellation must still put the buffer on disk.
            self._ack_everything = True
            await asyncio.shield(self._write_buffer())
        if self._buffered:
            log.error("outbox closed while its disk refuses writes: items in memory are lost",
                      outbox=self.name, lost=self._buffered, error=self.error)
        await self._db.close()
        self._db = None
        if self._own_writer and self._writer is not None:
            await self._writer.close()
            self._writer = None


class Outbox:
    """A queue on disk with one consumer (a notification hook's, an ingest's that takes from the broker): a
    journal of its own with a single cursor, so the bound, the priorities, the group commit and the full
    disk are handled in one place. An outbox file of an earlier version at the same path is taken in at
    `open`, in place (its items keep their ids).

        outbox = Outbox(state_dir / "hook-pager.sqlite", name="hook-pager", max_items=10_000, writer=writer)
        await outbox.open()
        outbox.put(key, payload, priority=0)   # never blocks: buffered, then written by the `run` task
        items = await outbox.take(16)          # oldest first, priority 0 first; the same until acknowledged
        await outbox.ack(items)
        await outbox.close()                   # writes what is still buffered
    """

    SOLE = "outbox"  # the consumer's name inside the file, whatever the outbox is called

    def __init__(self, path: Path | str, *, name: str, max_items: int, writer: SqliteWriter | None = None,
                 memory_max_bytes: int = 64 * 1024 * 1024) -> None:
        self.journal = Journal(path, consumers={self.SOLE: max_items}, writer=writer,
                               memory_max_bytes=memory_max_bytes, name=name, adopt_outbox_table=True)
        self.cursor = self.journal.cursor(self.SOLE)
        self.cursor.name = name  # metrics and logs say the outbox's name

    @property
    def name(self) -> str:
        return self.cursor.name

    @property
    def max_items(self) -> int:
        return self.cursor.max_items

    @property
    def depth(self) -> int:
        return self.cursor.depth

    @property
    def dropped(self) -> int:
        return self.cursor.dropped

    @property
    def put_total(self) -> int:
        return self.cursor.put_total

    @property
    def degraded(self) -> bool:
        """True from a write the disk refused to the next one it takes."""
        return self.journal.degraded

    def views(self) -> list[Cursor]:
        return [self.cursor]

    def put(self, key: str, payload: bytes, priority: int = 1, *, retain: bool = False,
            also: Iterable[str] = ()) -> None:
        if also:
            raise ValueError("an outbox has one consumer")
        self.cursor.put(key, payload, priority, retain=retain)

    async def take(self, limit: int) -> list[Item]:
        return await self.cursor.take(limit)

    async def ack(self, items: Sequence[Item]) -> None:
        await self.cursor.ack(items)

    async def flush(self) -> None:
        await self.journal.flush()

    async def open(self) -> None:
        await self.journal.open()

    async def run(self) -> None:
        await self.journal.run()

    async def close(self) -> None:
        await self.journal.close()


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


# ---- jobs on the writer thread -----------------------------------------------------------------------

def _open(db: sqlite3.Connection, names: list[str], adopt: bool = False) -> dict[str, tuple[int, int]]:
    """Each consumer's bit (kept from earlier starts) and the rows pending for it. `adopt`: the rows of an
    outbox of an earlier version in this file become the one consumer's, and its table goes."""
    had_journal = _has_table(db, "journal")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    bits: dict[str, int] = dict(db.execute("SELECT name, bit FROM consumers").fetchall())
    found: dict[str, tuple[int, int]] = {}
    for name in names:
        if name not in bits:
            free = next(b for b in range(62) if b not in bits.values())
            db.execute("INSERT INTO consumers (name, bit) VALUES (?, ?)", (name, free))
            bits[name] = free
        bit = bits[name]
        # A partial index per consumer: its `take` reads its own rows in order, whatever the others left.
        db.execute(f"CREATE INDEX IF NOT EXISTS journal_pending_{bit} ON journal (priority, id) "
                   f"WHERE pending & {1 << bit} != 0")
        if adopt and _has_table(db, "outbox"):
            if not had_journal:  # ids go on from the outbox's: an item keeps its id across the change
                db.execute("INSERT INTO journal (id, priority, key, payload, retain, pending) "
                           f"SELECT id, min(max(priority, 0), 1), key, payload, retain, {1 << bit} FROM outbox")
            else:
                db.execute("INSERT INTO journal (priority, key, payload, retain, pending) "
                           f"SELECT min(max(priority, 0), 1), key, payload, retain, {1 << bit} FROM outbox "
                           "ORDER BY id")
            db.execute("DROP TABLE outbox")
        count: int = db.execute(f"SELECT count(*) FROM journal WHERE pending & {1 << bit} != 0").fetchone()[0]
        found[name] = (bit, count)
    return found


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _insert_rows(db: sqlite3.Connection, rows: list[tuple[int, str, bytes, int, int]]) -> int:
    """Insert rows (priority, key, payload, retain, pending); the id of the first (ids are consecutive: this
    thread is the only writer, and AUTOINCREMENT never reuses one)."""
    seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'journal'").fetchone()
    before = db.execute("SELECT max(id) FROM journal").fetchone()[0] or 0
    start = max(before, seq[0] if seq else 0)
    db.executemany("INSERT INTO journal (priority, key, payload, retain, pending) VALUES (?, ?, ?, ?, ?)", rows)
    return int(start) + 1


def _ack(db: sqlite3.Connection, keep: int, mask: int, runs: list[tuple[int, int]]) -> int:
    """Clear `mask` on the rows of `runs`: those no other consumer waits for are deleted (never updated
    first). Returns the rows changed."""
    before = db.total_changes
    db.executemany(f"DELETE FROM journal WHERE id BETWEEN ? AND ? AND pending = {mask}", runs)
    db.executemany(f"UPDATE journal SET pending = pending & ? WHERE id BETWEEN ? AND ? AND pending & {mask} != 0",
                   [(keep, a, b) for a, b in runs])
    return db.total_changes - before


def _drop_oldest(db: sqlite3.Connection, mask: int, count: int) -> list[int]:
    """Over a consumer's bound: clear `mask` on its `count` oldest rows of the lowest priority first; their
    ids."""
    ids: list[int] = []
    for priority in sorted(PRIORITIES, reverse=True):
        if len(ids) >= count:
            break
        ids.extend(r[0] for r in db.execute(
            f"SELECT id FROM journal WHERE pending & {mask} != 0 AND priority = ? ORDER BY id LIMIT ?",
            (priority, count - len(ids))))
    ids.sort()
    if ids:
        _ack(db, _ALL_BITS ^ mask, mask, _runs(ids))
    return ids


def _write(db: sqlite3.Connection, rows: list[tuple[int, str, bytes, int, int]],
           acks: list[tuple[int, int, list[tuple[int, int]]]], excess: list[tuple[int, int]],
           merged: tuple[int, list[tuple[int, int]]] | None = None) -> tuple[int, list[int], dict[int, list[int]]]:
    """One group commit: the acknowledgements, the new rows, then each consumer's bound. `merged`: the
    runs of rows every consumer (`everyone`, their bits) acknowledged, deleted at once where every one of
    them was still pending; each consumer's `acks` include them too, for the rows that were not. Returns
    (the first new id, rows changed per ack, the ids dropped per consumer in `excess`)."""
    deleted = 0
    if merged is not None:
        everyone, runs = merged
        before = db.total_changes
        db.executemany(f"DELETE FROM journal WHERE id BETWEEN ? AND ? AND pending = {everyone}", runs)
        deleted = db.total_changes - before
    changed = [deleted + _ack(db, keep, mask, runs) for keep, mask, runs in acks]
    first = _insert_rows(db, rows) if rows else 0
    dropped = {mask: _drop_oldest(db, mask, count) for mask, count in excess}
    return first, changed, dropped


def _select(db: sqlite3.Connection, mask: int, limit: int) -> tuple[list[tuple[int, str, bytes, int, int]], int]:
    rows: list[tuple[int, str, bytes, int, int]] = db.execute(
        f"SELECT id, key, payload, priority, retain FROM journal WHERE pending & {mask} != 0 "
        "ORDER BY priority, id LIMIT ?", (limit,)).fetchall()
    seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'journal'").fetchone()
    return rows, int(seq[0]) if seq else 0


def _legacy_rows(db: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, int, str, bytes, int]]:
    """The rows of an outbox file: of an earlier version (table outbox) or an `Outbox` of this one (a
    journal whose one consumer's rows are all that is pending)."""
    table, where = ("journal", "pending != 0 AND") if _has_table(db, "journal") else ("outbox", "")
    rows: list[tuple[int, int, str, bytes, int]] = db.execute(
        f"SELECT id, min(max(priority, 0), 1), key, payload, retain FROM {table} WHERE {where} id > ? "
        "ORDER BY id LIMIT ?", (after, limit)).fetchall()
    return rows
