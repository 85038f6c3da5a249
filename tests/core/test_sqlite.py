"""The one SQLite writer: strict order, errors to the caller, a bounded queue, a clean shutdown, group commit.

Jobs are held on a threading.Event where a test needs the writer busy: the test decides when it goes on,
no timing involved.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dcim.core.sqlite import SqliteWriter, WriterClosed


@pytest.fixture
async def writer() -> AsyncIterator[SqliteWriter]:
    w = SqliteWriter(name="test-writer", max_jobs=4)
    try:
        yield w
    finally:
        await w.close()


def _schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS log (n INTEGER, who TEXT)")


def _append(conn: sqlite3.Connection, n: int, who: str) -> int:
    conn.execute("INSERT INTO log (n, who) VALUES (?, ?)", (n, who))
    return n


def _all(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return [(int(n), str(who)) for n, who in conn.execute("SELECT n, who FROM log ORDER BY rowid")]


def _hold(started: threading.Event, release: threading.Event) -> str:
    started.set()
    release.wait()
    return threading.current_thread().name


async def test_concurrent_submitters_keep_submission_order(tmp_path: Path, writer: SqliteWriter) -> None:
    """Tasks and threads submitting at once: the rows land in the order the jobs were submitted, which
    for each submitter is its own order; and each task's job runs after every job submitted before it."""
    db = writer.database(tmp_path / "order.sqlite")
    await db.call(_schema)
    submitted: list[tuple[int, str]] = []
    lock = threading.Lock()

    async def task_submitter(who: str) -> None:
        for n in range(50):
            with lock:
                submitted.append((n, who))
                # Submitted under the lock, so `submitted` has the writer's order: submit() enqueues
                # before it first suspends (the queue bound only makes it wait after that).
                future = asyncio.ensure_future(db.call(_append, n, who))
            await future

    def thread_submitter(who: str) -> None:
        for n in range(50):
            db.call_sync(_append, n, who)

    threads = [threading.Thread(target=thread_submitter, args=(f"thread-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    await asyncio.gather(*(task_submitter(f"task-{i}") for i in range(3)))
    await asyncio.gather(*(asyncio.to_thread(t.join) for t in threads))
    rows = await db.call(_all)
    # Every submitter's own jobs in its own order, nothing lost, nothing twice.
    for who in ("task-0", "task-1", "task-2", "thread-0", "thread-1"):
        assert [n for n, w in rows if w == who] == list(range(50)), who
    assert len(rows) == 250
    # Across the tasks (which enqueue under the lock), the global order is the order of submission.
    tasks_only = [r for r in rows if r[1].startswith("task-")]
    assert tasks_only == [r for r in submitted if r[1].startswith("task-")]


async def test_jobs_run_in_submission_order_even_when_the_queue_is_full(tmp_path: Path) -> None:
    writer = SqliteWriter(name="small", max_jobs=2)
    db = writer.database(tmp_path / "full.sqlite")
    await db.call(_schema)
    started, release = threading.Event(), threading.Event()
    blocker = asyncio.ensure_future(writer.call(_hold, started, release))
    await asyncio.to_thread(started.wait)
    # The writer is busy: two jobs fill the queue, the rest wait for room, each in a task of its own.
    calls = [asyncio.ensure_future(db.call(_append, n, "t")) for n in range(10)]
    for _ in range(3):
        await asyncio.sleep(0)  # every task reaches its submit
    assert writer.depth == 10
    assert not any(c.done() for c in calls)
    release.set()
    assert await asyncio.gather(*calls) == list(range(10))
    assert await blocker == "small"
    assert [n for n, _ in await db.call(_all)] == list(range(10))
    await writer.close()


async def test_a_full_queue_makes_the_submitter_wait_without_blocking_the_loop(tmp_path: Path) -> None:
    writer = SqliteWriter(name="bounded", max_jobs=1)
    started, release = threading.Event(), threading.Event()
    busy = asyncio.ensure_future(writer.call(_hold, started, release))
    await asyncio.to_thread(started.wait)
    queued = asyncio.ensure_future(writer.call(lambda: "queued"))
    waiting = asyncio.ensure_future(writer.call(lambda: "waited for room"))
    ticks = 0
    for _ in range(20):
        await asyncio.sleep(0)  # the loop keeps running while `waiting` waits for room
        ticks += 1
    assert ticks == 20 and not waiting.done() and not queued.done()
    assert writer.depth == 2  # one admitted (the bound), one waiting for room: nothing beyond the callers
    release.set()
    assert await queued == "queued"
    assert await waiting == "waited for room"
    await busy
    await writer.close()


def test_a_full_queue_blocks_a_thread_until_there_is_room(tmp_path: Path) -> None:
    writer = SqliteWriter(name="bounded-sync", max_jobs=1)
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []  # appended on the writer thread: the order the jobs ran in
    busy = threading.Thread(target=writer.call_sync, args=(_hold, started, release))
    busy.start()
    started.wait()
    admitted = threading.Thread(target=writer.call_sync, args=(ran.append, "admitted"))
    admitted.start()
    while writer.depth < 1:
        threading.Event().wait(0.001)  # until it is queued (polling state, not a timing)
    blocked = threading.Thread(target=writer.call_sync, args=(ran.append, "blocked"))
    blocked.start()
    while writer.depth < 2:
        threading.Event().wait(0.001)
    assert blocked.is_alive() and admitted.is_alive()  # both wait: one for its turn, one for room
    release.set()
    for thread in (busy, admitted, blocked):
        thread.join()
    assert ran == ["admitted", "blocked"]
    writer.close_sync()


async def test_errors_reach_the_caller_and_undo_only_that_job(tmp_path: Path, writer: SqliteWriter) -> None:
    db = writer.database(tmp_path / "errors.sqlite")
    await db.call(_schema)

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO log VALUES (99, 'half')")
        raise ValueError("refused")

    ok_before = asyncio.ensure_future(db.call(_append, 1, "a"))
    bad = asyncio.ensure_future(db.call(half_then_fail))
    bad_sql = asyncio.ensure_future(db.call(lambda conn: conn.execute("SELECT nope FROM nowhere")))
    ok_after = asyncio.ensure_future(db.call(_append, 2, "b"))
    assert await ok_before == 1
    with pytest.raises(ValueError, match="refused"):
        await bad
    with pytest.raises(sqlite3.OperationalError, match="no such"):
        await bad_sql
    assert await ok_after == 2
    # Same group, same transaction: the failed jobs are undone, the others committed.
    assert await db.call(_all) == [(1, "a"), (2, "b")]
    with pytest.raises(ZeroDivisionError):
        writer.call_sync(lambda: 1 / 0)
    # A sync caller's error is its own too; the writer goes on.
    assert db.call_sync(_all) == [(1, "a"), (2, "b")]


async def test_a_cancelled_caller_does_not_unsubmit_its_job(tmp_path: Path, writer: SqliteWriter) -> None:
    db = writer.database(tmp_path / "cancel.sqlite")
    await db.call(_schema)
    started, release = threading.Event(), threading.Event()
    busy = asyncio.ensure_future(writer.call(_hold, started, release))
    await asyncio.to_thread(started.wait)
    call = asyncio.ensure_future(db.call(_append, 7, "cancelled"))
    await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    release.set()
    await busy
    assert await db.call(_all) == [(7, "cancelled")]


async def test_close_drains_then_refuses(tmp_path: Path) -> None:
    writer = SqliteWriter(name="closing", max_jobs=2)
    path = tmp_path / "drain.sqlite"
    db = writer.database(path)
    await db.call(_schema)
    started, release = threading.Event(), threading.Event()
    busy = asyncio.ensure_future(writer.call(_hold, started, release))
    await asyncio.to_thread(started.wait)
    pending = [asyncio.ensure_future(db.call(_append, n, "late")) for n in range(5)]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(writer.close())
    await asyncio.sleep(0)
    with pytest.raises(WriterClosed):
        await writer.call(lambda: None)
    release.set()
    await closing
    assert [await p for p in pending] == list(range(5))
    await busy
    # Committed and closed: another connection sees every row.
    with sqlite3.connect(path) as check:
        assert [n for (n,) in check.execute("SELECT n FROM log ORDER BY rowid")] == list(range(5))
    assert db.conn is None


async def test_connections_belong_to_the_writer_thread(tmp_path: Path, writer: SqliteWriter) -> None:
    db = writer.database(tmp_path / "owned.sqlite")
    conn = await db.call(lambda c: c)
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")  # any use outside the writer thread is an error, never a race
    assert await db.call(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"


async def test_call_sync_from_a_job_is_refused(writer: SqliteWriter) -> None:
    with pytest.raises(RuntimeError, match="wait for itself"):
        await writer.call(lambda: writer.call_sync(lambda: None))


async def test_jobs_queued_together_share_one_commit(tmp_path: Path, writer: SqliteWriter) -> None:
    """Group commit: a job's caller hears of success only once its group is committed, and another
    connection sees the group's rows all at once."""
    path = tmp_path / "group.sqlite"
    db = writer.database(path)
    await db.call(_schema)
    gate, release = threading.Event(), threading.Event()
    blocker_started, blocker_release = threading.Event(), threading.Event()
    busy = asyncio.ensure_future(writer.call(_hold, blocker_started, blocker_release))
    await asyncio.to_thread(blocker_started.wait)
    first = asyncio.ensure_future(db.call(_append, 1, "group"))
    held = asyncio.ensure_future(db.call(lambda c: _hold(gate, release)))
    await asyncio.sleep(0)
    blocker_release.set()
    await busy
    await asyncio.to_thread(gate.wait)  # the second job runs: the first has run, in the same transaction

    def visible() -> int:
        with sqlite3.connect(path) as other:
            return int(other.execute("SELECT count(*) FROM log").fetchone()[0])

    assert await asyncio.to_thread(visible) == 0
    assert not first.done()
    release.set()
    assert await first == 1
    await held
    assert await asyncio.to_thread(visible) == 1
