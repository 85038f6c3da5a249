"""One SQLite writer per process: one thread owns every connection and runs jobs strictly in order.

    writer = SqliteWriter(name="dcim")
    db = writer.database(state_dir / "mqtt-outbox.sqlite")
    rows = await db.call(select, 500)        # from the event loop: select(conn, 500) runs on the writer
    count = db.call_sync(count_rows)         # from a CLI or another thread: blocks that thread
    await db.close()                         # this file's connection (the writer stays)
    await writer.close()                     # runs everything submitted, commits, closes, ends the thread

Why one thread: SQLite wants one writer per file, and the event loop must never wait on the disk. Every
user (outboxes, notification state, alarm store) hands the writer functions that receive the
connection; the writer runs them one after the other in the order they were submitted, so two writes
can never land out of order, whichever task or thread submitted them.

Jobs queued together share one transaction per file (group commit): each job runs in a savepoint of its
own (unless it is its file's only job in the group), so a job that raises undoes only itself and its caller
gets the exception; the others are committed
once at the end of the group, and only then are their callers told. A commit that fails (a full disk)
fails every job of that group on that file. Jobs must not BEGIN or COMMIT themselves.

The queue is bounded (`max_jobs`): a submitter finding it full waits (an async one without blocking the
loop) in first-come order, so the bound never reorders jobs and memory never grows with a slow disk.
A submitted job always runs, even if its caller is cancelled while waiting for the result.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

GROUP_MAX = 64  # jobs per group commit: a bound on how long a caller waits for its commit


class WriterClosed(RuntimeError):
    """The writer was closed: nothing can be submitted any more."""


class _Outcome(Generic[T]):
    """How a job's result (or its admission into a full queue) reaches its submitter."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        self.future: asyncio.Future[T] | None = loop.create_future() if loop is not None else None
        self.event = threading.Event() if loop is None else None
        self.result: T | None = None
        self.error: BaseException | None = None

    def settle(self, result: T | None, error: BaseException | None) -> None:
        """Called on the writer thread."""
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(_settle, self.future, result, error)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more
        else:
            assert self.event is not None
            self.result, self.error = result, error
            self.event.set()

    def wait_sync(self) -> T:
        assert self.event is not None
        self.event.wait()
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


def _settle(future: asyncio.Future[Any] | None, result: Any, error: BaseException | None) -> None:
    if future is None or future.done():
        return  # the caller was cancelled: the job ran anyway, its result has no taker
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Job:
    __slots__ = ("admitted", "args", "db", "error", "fn", "outcome", "result")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], db: Database | None,
                 outcome: _Outcome[Any], admitted: _Outcome[None] | None) -> None:
        self.fn = fn
        self.args = args
        self.db = db
        self.outcome = outcome
        self.admitted = admitted
        self.result: Any = None
        self.error: BaseException | None = None


class Database:
    """One SQLite file on a writer. Its connection is opened by the writer thread on first use."""

    def __init__(self, writer: SqliteWriter, path: Path | str, *, row_factory: Any = None,
                 busy_timeout_ms: int = 5000) -> None:
        self.writer = writer
        self.path = str(path)
        self.row_factory = row_factory
        self.busy_timeout_ms = busy_timeout_ms
        self.conn: sqlite3.Connection | None = None  # touched by the writer thread only

    def connection(self) -> sqlite3.Connection:
        """The connection (writer thread only): opened, in WAL mode, on first use."""
        if self.conn is None:
            with self.writer._cond:
                if self not in self.writer._databases:
                    self.writer._databases.append(self)
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread (the default) makes any use from another thread an error, not a race.
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                if self.row_factory is not None:
                    conn.row_factory = self.row_factory
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                conn.close()
                raise
            self.conn = conn
        return self.conn

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(connection, *args)` on the writer thread, in a transaction; its result or its exception."""
        return await self.writer._call(fn, args, self)

    async def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue `fn(connection, *args)` (waiting only for room) and return the future of its result."""
        return await self.writer._submit(fn, args, self)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self.writer._call_sync(fn, args, self)

    async def close(self) -> None:
        """Commit and close this file's connection after everything submitted before."""
        await self.writer._call(_close, (), self)

    def close_sync(self) -> None:
        self.writer._call_sync(_close, (), self)


def _close(conn: sqlite3.Connection) -> None:
    """A marker: the writer commits the file's transaction, then closes its connection."""


class SqliteWriter:
    def __init__(self, *, name: str = "sqlite-writer", max_jobs: int = 1024) -> None:
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        self.name = name
        self.max_jobs = max_jobs
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()      # admitted, waiting to run
        self._overflow: deque[_Job] = deque()   # submitted while the queue was full, in order
        self._group: list[_Job] = []            # running now (writer thread)
        self._closing = False
        self._thread: threading.Thread | None = None
        self._databases: list[Database] = []
        self._finished: list[_Outcome[None]] = []
        self._done = False

    # ---- the submitting side (any thread) ------------------------------------------------------------

    def database(self, path: Path | str, *, row_factory: Any = None) -> Database:
        return Database(self, path, row_factory=row_factory)

    @property
    def depth(self) -> int:
        """Jobs waiting to run, including those waiting for room."""
        with self._cond:
            return len(self._queue) + len(self._overflow)

    @property
    def closed(self) -> bool:
        return self._closing

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the writer thread (no connection, no transaction), in order with every job."""
        return await self._call(fn, args, None)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self._call_sync(fn, args, None)

    def _enqueue(self, job: _Job) -> bool:
        """True if admitted at once; False if it waits in the overflow for room."""
        with self._cond:
            if self._closing:
                raise WriterClosed(f"sqlite writer {self.name} is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            # Behind anyone already waiting for room: the bound never lets a job overtake another.
            if not self._overflow and len(self._queue) < self.max_jobs:
                self._queue.append(job)
                self._cond.notify_all()
                return True
            self._overflow.append(job)
            return False

    async def _submit(self, fn: Callable[..., T], args: tuple[Any, ...], db: Database | None) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        outcome: _Outcome[T] = _Outcome(loop)
        admitted: _Outcome[None] = _Outcome(loop)
        job = _Job(fn, args, db, outcome, admitted)
        assert outcome.future is not None
        if not self._enqueue(job):
            assert admitted.future is not None
            try:
                # Shielded: the job is submitted and will run; a cancelled caller only stops waiting.
                await asyncio.shield(admitted.future)
            except asyncio.CancelledError:
                outcome.future.cancel()  # nobody will take its result
                raise
        return outcome.future

    async def _call(self, fn: Callable[..., T], args: tuple[Any, ...], db: Database | None) -> T:
        future = await self._submit(fn, args, db)
        return await future

    def _call_sync(self, fn: Callable[..., T], args: tuple[Any, ...], db: Database | None) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("call_sync from a job on the writer thread would wait for itself")
        outcome: _Outcome[T] = _Outcome(None)
        self._enqueue(_Job(fn, args, db, outcome, None))
        return outcome.wait_sync()

    # ---- closing ---------------------------------------------------------------------------------------

    def _begin_close(self, waiter: _Outcome[None]) -> bool:
        """Stop taking jobs; False if there is nothing left to wait for."""
        with self._cond:
            self._closing = True
            if self._thread is None or self._done:
                self._done = True
                return False
            self._finished.append(waiter)
            self._cond.notify_all()
            return True

    async def close(self) -> None:
        """Run what was submitted, commit, close every connection, end the thread."""
        waiter: _Outcome[None] = _Outcome(asyncio.get_running_loop())
        if self._begin_close(waiter):
            assert waiter.future is not None
            await asyncio.shield(waiter.future)
        if self._thread is not None:
            self._thread.join()  # it has finished: returns at once

    def close_sync(self) -> None:
        waiter: _Outcome[None] = _Outcome(None)
        if self._begin_close(waiter):
            waiter.wait_sync()
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join()

    # ---- the writer thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop_jobs()
        except BaseException as err:
            # A bug in the writer itself: say so, and fail every waiting job rather than leave its
            # submitter waiting for ever.
            log.exception("sqlite writer stopped", writer=self.name)
            with self._cond:
                self._closing = True
                jobs = [*self._group, *self._queue, *self._overflow]
                self._queue.clear()
                self._overflow.clear()
            for job in jobs:
                job.outcome.settle(None, WriterClosed(f"sqlite writer {self.name} stopped: {err!r}"))
                if job.admitted is not None:
                    job.admitted.settle(None, None)
        finally:
            self._finish()

    def _loop_jobs(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    break  # closing, and everything submitted has run
                group = self._group = [self._queue.popleft() for _ in range(min(len(self._queue), GROUP_MAX))]
                admitted = []
                while self._overflow and len(self._queue) < self.max_jobs:
                    job = self._overflow.popleft()
                    self._queue.append(job)
                    admitted.append(job)
            for job in admitted:
                if job.admitted is not None:  # an async submitter waiting for room
                    job.admitted.settle(None, None)
            self._run_group(group)
            self._group = []

    def _finish(self) -> None:
        for db in list(self._databases):
            self._close_db(db)
        with self._cond:
            self._done = True
            finished, self._finished = self._finished, []
        for waiter in finished:
            waiter.settle(None, None)

    def _run_group(self, group: list[_Job]) -> None:
        # Jobs whose success waits for their file's commit.
        open_txn: dict[Database, list[_Job]] = {}
        # A file with one job in the group needs no savepoint: undoing the job is undoing the transaction.
        per_db: dict[Database, int] = {}
        for job in group:
            if job.db is not None:
                per_db[job.db] = per_db.get(job.db, 0) + 1
        for job in group:
            db = job.db
            if db is None:
                try:
                    job.result = job.fn(*job.args)
                except Exception as err:
                    job.error = err
                continue
            if job.fn is _close:
                self._commit(db, open_txn.pop(db, []))
                self._close_db(db)
                with self._cond:
                    if db in self._databases:
                        self._databases.remove(db)
                continue
            self._run_in_txn(db, job, open_txn, alone=per_db[db] == 1)
        for db, jobs in open_txn.items():
            self._commit(db, jobs)
        for job in group:
            job.outcome.settle(job.result, job.error)

    def _run_in_txn(self, db: Database, job: _Job, open_txn: dict[Database, list[_Job]], *, alone: bool) -> None:
        try:
            conn = db.connection()
            if not conn.in_transaction:
                # IMMEDIATE: take the write lock now (waiting busy_timeout for another process, a
                # `dcim alarms` CLI), not halfway through a job.
                conn.execute("BEGIN IMMEDIATE")
                open_txn[db] = []
            if alone:
                try:
                    job.result = job.fn(conn, *job.args)
                except Exception as err:
                    job.error = err
                    self._rollback(conn)
                    open_txn.pop(db, None)
                    return
                open_txn[db].append(job)
                return
            conn.execute("SAVEPOINT job")
        except Exception as err:
            job.error = err
            return
        try:
            job.result = job.fn(conn, *job.args)
        except Exception as err:
            job.error = err
            self._undo_job(db, conn, open_txn, err)
            return
        try:
            conn.execute("RELEASE job")
        except Exception as err:
            job.error = err
            self._undo_job(db, conn, open_txn, err)
            return
        open_txn[db].append(job)

    def _undo_job(self, db: Database, conn: sqlite3.Connection, open_txn: dict[Database, list[_Job]],
                  err: Exception) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                return
            except Exception:
                self._rollback(conn)
        # SQLite gave up the whole transaction (it may, on a full disk or an I/O error): what the
        # group's earlier jobs wrote to this file is gone too, so they failed as well.
        for earlier in open_txn.pop(db, []):
            earlier.result, earlier.error = None, err

    def _commit(self, db: Database, jobs: list[_Job]) -> None:
        conn = db.conn
        if conn is None or not conn.in_transaction:
            return
        try:
            conn.execute("COMMIT")
        except Exception as err:
            self._rollback(conn)
            for job in jobs:
                job.result, job.error = None, err

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as err:
                log.warning("sqlite rollback failed", error=str(err))

    def _close_db(self, db: Database) -> None:
        if db.conn is None:
            return
        self._commit(db, [])
        try:
            db.conn.close()
        except sqlite3.Error as err:
            log.warning("sqlite close failed", path=db.path, error=str(err))
        db.conn = None
