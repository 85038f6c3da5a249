"""The shared journal: one row on disk for several consumers, each with its own cursor; order, priority,
bounds, nothing lost or repeated across falling behind and catching up, a close and reopen, a full disk,
and the outboxes of an earlier version taken in."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import dcim.core.journal as journal_module
from dcim.core.journal import Cursor, Journal, Outbox
from dcim.core.sqlite import SqliteWriter
from tests.helpers import wait_until

BOTH = ("ingest",)


@pytest.fixture
async def writer() -> AsyncIterator[SqliteWriter]:
    w = SqliteWriter(name="journal-tests")
    yield w
    await w.close()


@contextlib.asynccontextmanager
async def running(journal: Journal) -> AsyncIterator[Journal]:
    await journal.open()
    task = asyncio.create_task(journal.run())
    try:
        yield journal
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await journal.close()


def rows(path: Path) -> list[tuple[int, bytes, int]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [(r[0], bytes(r[1]), r[2]) for r in conn.execute("SELECT id, payload, pending FROM journal ORDER BY id")]


def payloads(items: list[Any]) -> list[bytes]:
    return [i.payload for i in items]


async def test_one_row_serves_both_consumers_and_goes_when_both_acknowledged(tmp_path: Path,
                                                                             writer: SqliteWriter) -> None:
    path = tmp_path / "j.sqlite"
    async with running(Journal(path, consumers={"mqtt": 100, "ingest": 100}, writer=writer)) as journal:
        mqtt, ingest = journal.cursor("mqtt"), journal.cursor("ingest")
        mqtt.put("t/1", b"reading", also=BOTH)
        mqtt.put("status/1", b"status only for mqtt", priority=0, retain=True)
        await journal.flush()
        assert [r[1] for r in rows(path)] == [b"status only for mqtt", b"reading"]  # written once each
        got = await mqtt.take(10)
        assert payloads(got) == [b"status only for mqtt", b"reading"] and got[0].retain
        assert payloads(await ingest.take(10)) == [b"reading"]
        await mqtt.ack(got)
        assert mqtt.depth == 0 and ingest.depth == 1
        await journal.flush()  # acknowledgements go to disk with the next write; `flush` makes one
        assert [r[1] for r in rows(path)] == [b"reading"]  # the ingest still waits for it
        await ingest.ack(await ingest.take(10))
        await journal.flush()
        assert rows(path) == [] and ingest.depth == 0


def record_updates(path: Path) -> None:
    """A trigger that keeps the id of every row an UPDATE touches (in a table of the test's)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript("""
            CREATE TABLE updated (id INTEGER);
            CREATE TRIGGER record_update AFTER UPDATE ON journal BEGIN INSERT INTO updated VALUES (new.id); END;
        """)


def updated(path: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM updated ORDER BY id")]


async def test_a_row_both_consumers_acknowledged_is_deleted_and_never_updated(
        tmp_path: Path, writer: SqliteWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first consumer's acknowledgement waits (up to ACK_HOLD) for the second's: the row is then deleted
    in one statement. One acknowledged by one consumer only goes to disk by itself once ACK_HOLD is up."""
    monkeypatch.setattr(journal_module, "ACK_HOLD", 0.3)
    path = tmp_path / "j.sqlite"
    async with running(Journal(path, consumers={"mqtt": 100, "ingest": 100}, writer=writer)) as journal:
        record_updates(path)
        mqtt, ingest = journal.cursor("mqtt"), journal.cursor("ingest")
        for n in range(5):
            mqtt.put("t", f"both {n}".encode(), also=BOTH)
        mqtt.put("s", b"mqtt only", priority=0, retain=True)
        await journal.flush()
        await mqtt.ack(await mqtt.take(10))
        await ingest.ack(await ingest.take(3))  # the other two stay with the ingest
        assert (mqtt.depth, ingest.depth) == (0, 2)
        await journal.flush()
        left = rows(path)
        assert [(r[1], r[2]) for r in left] == [(b"both 3", ingest.mask), (b"both 4", ingest.mask)]
        assert updated(path) == [r[0] for r in left]  # only the rows the ingest still waits for were updated
        # Nothing forces a write now: a consumer's acknowledgement reaches the disk by itself after ACK_HOLD.
        mqtt.put("s", b"mqtt only, later", priority=0, retain=True)
        await journal.flush()
        await mqtt.ack(await mqtt.take(10))
        await wait_until(lambda: len(rows(path)) == 2, timeout=30)
        assert [r[1] for r in rows(path)] == [b"both 3", b"both 4"] and mqtt.depth == 0
        await ingest.ack(await ingest.take(10))
    assert rows(path) == []  # `close` wrote the last acknowledgement


async def test_priority_then_age_and_the_same_items_until_acknowledged(tmp_path: Path,
                                                                       writer: SqliteWriter) -> None:
    async with running(Journal(tmp_path / "j.sqlite", consumers={"mqtt": 100}, writer=writer)) as journal:
        mqtt = journal.cursor("mqtt")
        mqtt.put("t", b"1")
        mqtt.put("a", b"alarm", priority=0)
        mqtt.put("t", b"2")
        await journal.flush()
        first = await mqtt.take(2)
        assert payloads(first) == [b"alarm", b"1"]
        assert await mqtt.take(2) == first
        await mqtt.ack(first[:1])
        assert payloads(await mqtt.take(5)) == [b"1", b"2"]


async def test_a_consumer_that_keeps_up_reads_nothing_back_from_disk(tmp_path: Path, writer: SqliteWriter,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_select(*args: Any) -> Any:
        raise AssertionError("a consumer that keeps up must be served from memory")

    async with running(Journal(tmp_path / "j.sqlite", consumers={"mqtt": 100, "ingest": 100},
                               writer=writer)) as journal:
        monkeypatch.setattr(journal_module, "_select", no_select)
        mqtt, ingest = journal.cursor("mqtt"), journal.cursor("ingest")
        for round_ in range(5):
            mqtt.put("t", f"r{round_}".encode(), also=BOTH)
            for cursor in (mqtt, ingest):
                items = await asyncio.wait_for(cursor.take(10), 30)
                assert payloads(items) == [f"r{round_}".encode()] and items[0].id > 0  # on disk first
                await cursor.ack(items)
        await journal.flush()
        assert rows(tmp_path / "j.sqlite") == []


async def test_flush_writes_the_acknowledgements_made_so_far_and_does_not_chase_new_ones(
        tmp_path: Path, writer: SqliteWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain at shutdown flushes while the consumers still send and acknowledge: `flush` writes what was
    acknowledged when it was called and returns, whatever they acknowledge meanwhile. Here the consumer
    acknowledges one more item each time a write lands, before anyone else sees that it landed."""
    path = tmp_path / "j.sqlite"
    async with running(Journal(path, consumers={"mqtt": 5000, "ingest": 5000}, writer=writer)) as journal:
        mqtt, ingest = journal.cursor("mqtt"), journal.cursor("ingest")
        for n in range(2000):
            mqtt.put("t", str(n).encode(), also=BOTH)
        await journal.flush()
        await mqtt.ack(await mqtt.take(100))
        acked = 0

        async def acknowledge_one() -> None:
            nonlocal acked
            await mqtt.ack(await mqtt.take(1))
            acked += 1

        written_back = journal._written_back
        acknowledging: list[asyncio.Task[None]] = []

        def and_acknowledge_one(*args: Any) -> None:
            acknowledging.append(asyncio.ensure_future(acknowledge_one()))
            written_back(*args)

        monkeypatch.setattr(journal, "_written_back", and_acknowledge_one)
        await asyncio.wait_for(journal.flush(), 60)
        assert acked <= 2, f"flush went on while the consumer acknowledged ({acked} writes)"
        monkeypatch.setattr(journal, "_written_back", written_back)
        await asyncio.gather(*acknowledging)
        await journal.flush()
        assert sum(1 for r in rows(path) if r[2] == ingest.mask) == 100 + acked  # on disk, held no more


async def test_take_waits_for_a_put(tmp_path: Path, writer: SqliteWriter) -> None:
    async with running(Journal(tmp_path / "j.sqlite", consumers={"mqtt": 100}, writer=writer)) as journal:
        waiter = asyncio.create_task(journal.cursor("mqtt").take(5))
        await asyncio.sleep(0)
        assert not waiter.done()
        journal.cursor("mqtt").put("t", b"late")
        assert payloads(await asyncio.wait_for(waiter, 60)) == [b"late"]


async def consume(cursor: Cursor, total: int, rng: random.Random, seen: list[bytes]) -> None:
    """Take and acknowledge until `total` items were acknowledged; sometimes fail to send (take again)."""
    while len(seen) < total:
        items = await cursor.take(rng.randint(1, 40))
        if rng.random() < 0.2:
            await asyncio.sleep(0)  # a failed send: nothing acknowledged, taken again
            continue
        part = items[: rng.randint(1, len(items))]  # the ingest acknowledges a prefix of what it took
        seen.extend(i.payload for i in part)
        await cursor.ack(part)
        if rng.random() < 0.3:
            await asyncio.sleep(rng.random() / 200)


@pytest.mark.parametrize("seed", range(6))
async def test_falling_behind_and_catching_up_loses_and_repeats_nothing(
        tmp_path: Path, writer: SqliteWriter, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """A consumer is handed rows in memory while it keeps up, reads them from disk once it fell more than
    FRESH_MAX behind, and switches back: each item is acknowledged exactly once, in order, by each."""
    monkeypatch.setattr(journal_module, "FRESH_MAX", 7)
    rng = random.Random(seed)
    total = 600
    async with running(Journal(tmp_path / "j.sqlite", consumers={"mqtt": 10_000, "ingest": 10_000},
                               writer=writer)) as journal:
        mqtt, ingest = journal.cursor("mqtt"), journal.cursor("ingest")
        seen_mqtt: list[bytes] = []
        seen_ingest: list[bytes] = []
        consumers = [asyncio.create_task(consume(mqtt, total, random.Random(seed + 100), seen_mqtt)),
                     asyncio.create_task(consume(ingest, total, random.Random(seed + 200), seen_ingest))]
        for n in range(total):
            mqtt.put("t", f"{n:04d}".encode(), also=BOTH)
            if rng.random() < 0.1:
                await asyncio.sleep(rng.random() / 100)
        await asyncio.wait_for(asyncio.gather(*consumers), 120)
        expected = [f"{n:04d}".encode() for n in range(total)]
        assert seen_mqtt == expected
        assert seen_ingest == expected
        assert mqtt.depth == 0 and ingest.depth == 0
    assert rows(tmp_path / "j.sqlite") == []


async def test_each_consumer_has_its_own_bound(tmp_path: Path, writer: SqliteWriter) -> None:
    path = tmp_path / "j.sqlite"
    async with running(Journal(path, consumers={"mqtt": 10, "ingest": 100}, writer=writer)) as journal:
        mqtt, ingest = journal.cursor("mqtt"), journal.cursor("ingest")
        mqtt.put("alarm", b"keep", priority=0, also=BOTH)
        for n in range(15):
            mqtt.put("t", str(n).encode(), also=BOTH)
        await journal.flush()
        assert mqtt.dropped == 6 and ingest.dropped == 0
        assert mqtt.depth == 10 and ingest.depth == 16
    async with running(Journal(path, consumers={"mqtt": 10, "ingest": 100}, writer=writer)) as journal:
        mqtt, ingest = journal.cursor("mqtt"), journal.cursor("ingest")
        assert payloads(await mqtt.take(100)) == [b"keep"] + [str(n).encode() for n in range(6, 15)]
        assert payloads(await ingest.take(100)) == [b"keep"] + [str(n).encode() for n in range(15)]


async def test_close_writes_the_buffer_and_each_cursor_finds_its_own_after_reopen(
        tmp_path: Path, writer: SqliteWriter) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path, consumers={"mqtt": 100, "ingest": 100}, writer=writer)
    await journal.open()
    journal.cursor("mqtt").put("t", b"both-1", also=BOTH)
    journal.cursor("mqtt").put("s", b"mqtt-only", priority=0)
    journal.cursor("ingest").put("local", b"ingest-only")
    await journal.close()  # no writer task ever ran: close must still write the buffer
    # Reopened with the consumers named in the other order: each keeps its bit.
    async with running(Journal(path, consumers={"ingest": 100, "mqtt": 100}, writer=writer)) as again:
        mqtt, ingest = again.cursor("mqtt"), again.cursor("ingest")
        assert mqtt.depth == 2 and ingest.depth == 2
        got = await mqtt.take(10)
        assert payloads(got) == [b"mqtt-only", b"both-1"]
        await mqtt.ack(got)
        assert payloads(await ingest.take(10)) == [b"both-1", b"ingest-only"]
    # An acknowledgement that returned is on disk: not handed out again after a restart.
    async with running(Journal(path, consumers={"mqtt": 100, "ingest": 100}, writer=writer)) as third:
        assert third.cursor("mqtt").depth == 0
        assert payloads(await third.cursor("ingest").take(10)) == [b"both-1", b"ingest-only"]


async def test_rows_for_a_consumer_no_longer_configured_wait_for_it(tmp_path: Path, writer: SqliteWriter) -> None:
    path = tmp_path / "j.sqlite"
    async with running(Journal(path, consumers={"mqtt": 100, "ingest": 100}, writer=writer)) as journal:
        journal.cursor("mqtt").put("t", b"for both", also=BOTH)
        await journal.flush()
        await journal.cursor("mqtt").ack(await journal.cursor("mqtt").take(10))
    async with running(Journal(path, consumers={"mqtt": 100}, writer=writer)) as journal:
        assert journal.cursor("mqtt").depth == 0
    async with running(Journal(path, consumers={"mqtt": 100, "ingest": 100}, writer=writer)) as journal:
        assert payloads(await journal.cursor("ingest").take(10)) == [b"for both"]


async def test_depth_counts_what_is_being_written(tmp_path: Path, writer: SqliteWriter) -> None:
    """Between leaving the buffer and arriving on disk an item is in neither: depth must still count it (a
    shutdown drain or a test that waits for depth 0 took an empty moment for an empty queue)."""
    async with running(Journal(tmp_path / "j.sqlite", consumers={"mqtt": 100, "ingest": 100},
                               writer=writer)) as journal:
        mqtt, ingest = journal.cursor("mqtt"), journal.cursor("ingest")
        release = threading.Event()
        held = asyncio.ensure_future(journal.db.call(lambda _conn: release.wait(30)))  # holds the writer thread
        await asyncio.sleep(0)
        for n in range(5):
            mqtt.put("t", str(n).encode(), also=BOTH if n % 2 else ())
        await wait_until(lambda: journal._writing, timeout=10, message="the write is in flight")
        assert mqtt.buffered == 0 and mqtt.on_disk == 0  # neither in the buffer nor on disk yet
        assert (mqtt.depth, ingest.depth) == (5, 2)
        release.set()
        await held
        await journal.flush()
        assert (mqtt.depth, ingest.depth) == (5, 2) and mqtt.on_disk == 5


def old_outbox(path: Path, items: list[tuple[str, bytes, int, bool]]) -> None:
    """An outbox file as versions before the journal wrote it (its schema, verbatim)."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(OLD_OUTBOX_SCHEMA)
        db.executemany("INSERT INTO outbox (priority, key, payload, retain) VALUES (?, ?, ?, ?)",
                       [(priority, key, payload, int(retain)) for key, payload, priority, retain in items])


OLD_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
"""


async def test_the_outboxes_of_an_earlier_version_are_taken_in(tmp_path: Path, writer: SqliteWriter) -> None:
    # The publisher's outbox as an earlier version left it; the ingest's as an `Outbox` of this one (an ingest
    # that took from the broker, now in-process).
    old_outbox(tmp_path / "mqtt-outbox.sqlite", [("k/mqtt", b"m1", 1, False), ("k/mqtt", b"alarm", 0, True),
                                                 ("k/mqtt", b"m2", 1, False)])
    box = Outbox(tmp_path / "ingest-outbox.sqlite", name="ingest", max_items=100, writer=writer)
    await box.open()
    box.put("k/ingest", b"gone", 1)
    box.put("k/ingest", b"line", 1)
    await box.close()
    box = Outbox(tmp_path / "ingest-outbox.sqlite", name="ingest", max_items=100, writer=writer)
    await box.open()
    await box.ack(await box.take(1))  # acknowledged: not taken in again
    await box.close()
    legacy = {"mqtt": tmp_path / "mqtt-outbox.sqlite", "ingest": tmp_path / "ingest-outbox.sqlite"}
    async with running(Journal(tmp_path / "journal.sqlite", consumers={"mqtt": 100, "ingest": 100},
                               writer=writer, legacy=legacy)) as journal:
        mqtt, ingest = journal.cursor("mqtt"), journal.cursor("ingest")
        got = await mqtt.take(10)
        assert payloads(got) == [b"alarm", b"m1", b"m2"] and got[0].retain and got[0].key == "k/mqtt"
        assert payloads(await ingest.take(10)) == [b"line"]
    assert not legacy["mqtt"].exists() and not legacy["ingest"].exists()


# ---- a disk that refuses writes (SQLITE_FULL through max_page_count, as in test_outbox.py) -----------------

BIG = b"x" * 8192


async def set_page_limit(journal: Journal, *, full: bool) -> None:
    def limit(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {int(pages) if full else 1_073_741_823}")

    await journal.db.call(limit)


async def test_a_full_disk_serves_both_from_memory_and_writes_back_what_one_still_waits_for(
        tmp_path: Path, writer: SqliteWriter) -> None:
    path = tmp_path / "j.sqlite"
    async with running(Journal(path, consumers={"mqtt": 100, "ingest": 100}, writer=writer)) as journal:
        mqtt, ingest = journal.cursor("mqtt"), journal.cursor("ingest")
        await set_page_limit(journal, full=True)
        mqtt.put("t", BIG, also=BOTH)
        mqtt.put("alarm", b"fire", priority=0, retain=True, also=BOTH)
        await wait_until(lambda: journal.degraded, timeout=10, message="the journal notices the full disk")
        await journal.flush()  # returns: the entries wait in memory
        got = await mqtt.take(10)
        assert payloads(got) == [b"fire", BIG] and all(i.id < 0 for i in got)
        await mqtt.ack(got)  # the broker took them from memory
        assert mqtt.depth == 0 and ingest.depth == 2
        mqtt.put("t", b"after", also=BOTH)
        await set_page_limit(journal, full=False)
        await wait_until(lambda: not journal.degraded, timeout=30, message="the retry writes once there is room")
        await journal.flush()
        assert payloads(await mqtt.take(10)) == [b"after"]  # not what it had already sent
        got = await ingest.take(10)
        assert payloads(got) == [b"fire", BIG, b"after"] and all(i.id > 0 for i in got)
        assert [r[1] for r in rows(path)] == [b"fire", BIG, b"after"]
        assert all(r[2] == ingest.mask for r in rows(path)[:2])  # only the ingest waits for those


async def test_acknowledged_from_memory_while_being_written_is_not_handed_out_again(
        tmp_path: Path, writer: SqliteWriter) -> None:
    path = tmp_path / "j.sqlite"
    async with running(Journal(path, consumers={"mqtt": 100}, writer=writer)) as journal:
        mqtt = journal.cursor("mqtt")
        await set_page_limit(journal, full=True)
        mqtt.put("t", BIG)
        await wait_until(lambda: journal.degraded, timeout=10, message="refused")
        got = await mqtt.take(10)
        await set_page_limit(journal, full=False)
        writing = asyncio.create_task(journal._write_buffer())  # the retry, racing the acknowledgement
        await asyncio.sleep(0)
        await mqtt.ack(got)
        await writing
        await journal._write_buffer()  # settles the acknowledgement on disk
        assert mqtt.depth == 0
        assert rows(path) == []


async def test_rows_written_while_a_consumer_reads_its_backlog_are_neither_lost_nor_repeated(
        tmp_path: Path, writer: SqliteWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The switch from reading the disk back to memory, with a write (and its hand-over to the cursor)
    landing between the read and the consumer's next step: the order the writer thread settles jobs in
    does not allow that today, so it is forced here."""
    monkeypatch.setattr(journal_module, "FRESH_MAX", 3)
    async with running(Journal(tmp_path / "j.sqlite", consumers={"mqtt": 100}, writer=writer)) as journal:
        mqtt = journal.cursor("mqtt")
        for n in range(6):
            mqtt.put("t", f"old{n}".encode())
        await journal.flush()
        assert mqtt.behind  # more than FRESH_MAX at once
        real_call = journal.db.call
        landed = []

        async def call(fn: Any, *args: Any) -> Any:
            result = await real_call(fn, *args)
            if fn is journal_module._select and not landed:
                landed.append(True)
                for n in range(2):
                    mqtt.put("t", f"new{n}".encode())
                await journal._write_buffer()
            return result

        monkeypatch.setattr(journal.db, "call", call)
        seen: list[bytes] = []
        while len(seen) < 8:
            items = await asyncio.wait_for(mqtt.take(100), 30)
            seen.extend(payloads(items))
            await mqtt.ack(items)
        assert seen == [f"old{n}".encode() for n in range(6)] + [b"new0", b"new1"]
        assert not mqtt.behind and mqtt.depth == 0


def test_runs_cover_exactly_the_ids() -> None:
    rng = random.Random(7)
    for _ in range(500):
        ids = sorted(rng.sample(range(1, 60), rng.randint(0, 30)))
        if rng.random() < 0.3 and ids:
            ids = list(range(ids[0], ids[0] + len(ids)))  # one run
        runs = journal_module._runs(ids)
        assert [i for a, b in runs for i in range(a, b + 1)] == ids
        assert all(b + 1 < a2 for (_, b), (a2, _) in itertools.pairwise(runs))  # runs are maximal
