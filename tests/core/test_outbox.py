"""The durable outbox: order, priority, bound, and nothing lost across a close and reopen."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dcim.core.journal import Outbox
from dcim.core.sqlite import SqliteWriter
from tests.helpers import wait_until


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = Outbox(tmp_path / "o.sqlite", name="t", max_items=10)
    await box.open()
    writer = asyncio.create_task(box.run())
    yield box
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    await box.close()


async def test_priority_then_age(outbox: Outbox) -> None:
    outbox.put("t", b"1", priority=1)
    outbox.put("a", b"alarm", priority=0, retain=True)
    outbox.put("t", b"2", priority=1)
    items = await outbox.take(10)
    assert [i.payload for i in items] == [b"alarm", b"1", b"2"]
    assert items[0].retain and not items[1].retain


async def test_take_returns_same_items_until_acked(outbox: Outbox) -> None:
    outbox.put("t", b"1")
    outbox.put("t", b"2")
    first = await outbox.take(1)
    again = await outbox.take(1)
    assert first == again
    await outbox.ack(first)
    assert [i.payload for i in await outbox.take(5)] == [b"2"]


async def test_take_waits_for_put(outbox: Outbox) -> None:
    waiter = asyncio.create_task(outbox.take(5))
    await asyncio.sleep(0)
    assert not waiter.done()
    outbox.put("t", b"late")
    items = await asyncio.wait_for(waiter, 60)
    assert items[0].payload == b"late"


async def test_bound_drops_oldest_telemetry_first(outbox: Outbox) -> None:
    outbox.put("alarm", b"keep", priority=0)
    for n in range(15):
        outbox.put("t", str(n).encode())
    await outbox.flush()
    items = await outbox.take(100)
    assert len(items) == 10
    assert outbox.dropped == 6
    assert items[0].payload == b"keep"
    assert [i.payload for i in items[1:]] == [str(n).encode() for n in range(6, 15)]


async def test_close_writes_buffer_and_reopen_finds_it(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", name="t", max_items=100)
    await box.open()
    box.put("t", b"unsent-1")
    box.put("t", b"unsent-2")
    await box.close()  # no writer task ever ran: close must still persist the buffer
    again = Outbox(tmp_path / "o.sqlite", name="t", max_items=100)
    await again.open()
    assert again.depth == 2
    assert [i.payload for i in await again.take(10)] == [b"unsent-1", b"unsent-2"]
    await again.close()


# ---- a disk that refuses writes -------------------------------------------------------------------------
# `PRAGMA max_page_count` makes SQLite answer SQLITE_FULL ("database or disk is full") exactly as a full
# disk does, without root. The tmpfs test in tests/e2e/test_full_disk.py fills a real file system.

BIG = b"x" * 8192  # more than a page: every insert needs the file to grow


async def set_page_limit(box: Outbox, *, full: bool) -> None:
    def limit(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {int(pages) if full else 1_073_741_823}")

    await box.journal.db.call(limit)


@pytest.fixture
async def writer() -> AsyncIterator[SqliteWriter]:
    w = SqliteWriter(name="outbox-tests")
    yield w
    await w.close()


async def test_full_disk_keeps_items_in_memory_serves_them_and_writes_them_back(
        tmp_path: Path, writer: SqliteWriter) -> None:
    box = Outbox(tmp_path / "o.sqlite", name="full", max_items=100, writer=writer)
    await box.open()
    run = asyncio.create_task(box.run())
    try:
        await set_page_limit(box, full=True)
        box.put("t", BIG, priority=1)
        box.put("alarm", b"fire", priority=0, retain=True)
        await wait_until(lambda: box.degraded, timeout=10, message="the outbox notices the full disk")
        assert not run.done(), "the writer task must live on"
        await box.flush()  # returns: the items wait in memory
        items = await box.take(10)
        assert [i.payload for i in items] == [b"fire", BIG]  # alarms first, served from memory
        assert all(i.id < 0 for i in items)
        await box.ack(items[:1])
        assert box.depth == 1
        box.put("t", b"after", priority=1)
        await set_page_limit(box, full=False)
        await wait_until(lambda: not box.degraded, timeout=30, message="the retry writes once there is room")
        await box.flush()
        assert [i.payload for i in await box.take(10)] == [BIG, b"after"]
        assert all(i.id > 0 for i in await box.take(10))
    finally:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        await box.close()
    again = Outbox(tmp_path / "o.sqlite", name="full-again", max_items=100, writer=writer)
    await again.open()
    assert [i.payload for i in await again.take(10)] == [BIG, b"after"]
    await again.close()


async def test_full_disk_memory_bound_drops_oldest_telemetry_first(tmp_path: Path, writer: SqliteWriter) -> None:
    box = Outbox(tmp_path / "o.sqlite", name="bounded", max_items=1000, writer=writer,
                 memory_max_bytes=20 * (len(BIG) + 200))
    await box.open()
    await set_page_limit(box, full=True)
    box.put("alarm", b"keep me", priority=0)
    box.put("t", BIG + b"first", priority=1)
    await box.journal._write_buffer()  # one write attempt, refused
    assert box.degraded
    dropped_before = box.dropped
    for n in range(60):
        box.put("t", BIG + str(n).encode(), priority=1)
    assert box.dropped > dropped_before
    items = await box.take(1000)
    assert items[0].payload == b"keep me"
    kept = [i.payload for i in items[1:]]
    assert kept and kept[-1] == BIG + b"59"  # the newest telemetry is kept, the oldest went first
    assert kept == [BIG + str(n).encode() for n in range(60 - len(kept), 60)]
    await box.close()  # says what is lost, does not hang or raise


async def test_close_on_a_full_disk_neither_hangs_nor_raises(tmp_path: Path, writer: SqliteWriter) -> None:
    box = Outbox(tmp_path / "o.sqlite", name="closing", max_items=10, writer=writer)
    await box.open()
    await set_page_limit(box, full=True)
    box.put("t", BIG)
    await box.close()
    assert box.degraded


async def test_degraded_until_the_disk_takes_a_write_even_when_memory_empties(
        tmp_path: Path, writer: SqliteWriter) -> None:
    """What was kept in memory going out from there (acknowledged by the consumer) says nothing of the disk:
    the outbox stays degraded (and its gauge at 1) until a write succeeds, not on and off with every poll."""
    box = Outbox(tmp_path / "o.sqlite", name="emptied", max_items=100, writer=writer)
    await box.open()
    await set_page_limit(box, full=True)
    box.put("t", BIG)
    await box.journal._write_buffer()  # refused
    assert box.degraded
    await box.ack(await box.take(10))  # sent from memory
    assert box.depth == 0
    await box.journal._write_buffer()  # nothing to write: nothing learnt about the disk
    assert box.degraded
    await set_page_limit(box, full=False)
    box.put("t", b"next")
    await box.journal._write_buffer()
    assert not box.degraded
    await box.close()


# ---- an outbox of an earlier version ---------------------------------------------------------------------

async def test_an_outbox_file_of_an_earlier_version_is_taken_in_where_it_lies(tmp_path: Path) -> None:
    """Versions before the journal kept a table `outbox`; opening the same path turns it into a journal with
    the same items, ids and order (alarms first), in one transaction."""
    from tests.core.test_journal import old_outbox  # the earlier schema, verbatim

    path = tmp_path / "hook-pager.sqlite"
    old_outbox(path, [("g", b"warn-1", 1, False), ("g", b"page", 0, False), ("g", b"warn-2", 1, False)])
    box = Outbox(path, name="hook-pager", max_items=100)
    await box.open()
    writer = asyncio.create_task(box.run())
    try:
        assert box.depth == 3
        items = await box.take(10)
        assert [(i.id, i.payload) for i in items] == [(2, b"page"), (1, b"warn-1"), (3, b"warn-2")]
        await box.ack(items[:1])
        box.put("g", b"warn-3")
        await box.flush()
        assert [(i.id, i.payload) for i in await box.take(10)] == [(1, b"warn-1"), (3, b"warn-2"), (4, b"warn-3")]
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await box.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "outbox" not in tables and "journal" in tables


async def test_alarms_go_before_telemetry_written_earlier(outbox: Outbox) -> None:
    """Priority holds across writes, not only within one: telemetry on disk waits for an alarm put after it."""
    outbox.put("t", b"1")
    await outbox.flush()
    outbox.put("t", b"2")
    await outbox.flush()
    outbox.put("a", b"alarm", priority=0)
    await outbox.flush()
    assert [i.payload for i in await outbox.take(10)] == [b"alarm", b"1", b"2"]


async def test_a_put_before_open_is_refused_not_lost(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", name="early", max_items=10)
    with pytest.raises(RuntimeError, match="not open"):
        box.put("t", b"too early")
