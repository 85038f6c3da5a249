"""Alarm state and history in SQLite, so a restart neither loses an alarm nor notifies it again.

The engine and the HTTP API work on the in-memory records; every change is queued and written in
batches by `flush_async()` (the service runs it once per tick). All SQLite work runs on the process's one
SQLite writer thread (dcim.core.sqlite; a store without one, as `dcim alarms` opens it, makes its own),
in the order it was submitted: the event loop never waits on the disk, and no flush can overtake another.

Never an older state over a newer one: every engine write of an alarm carries `seq`, one more than any
the file has seen (the store starts at the file's highest), and the upsert takes the engine's columns
only from a row with a higher `seq` than the stored one. So an acknowledgement written by `dcim alarms`
from a stale copy of a firing alarm cannot bring back a state the daemon has since resolved, and a
write that arrives late never revives anything. Changes wait in memory, one snapshot per alarm, until a
flush succeeds (a full disk costs nothing but the wait).

The database is also the channel for `dcim alarms` run from a shell while the daemon runs: an
acknowledgement or shelve written there carries a newer `op_ns`, and the daemon's next flush picks it
up. Engine writes never overwrite an operator's newer acknowledgement, because the upsert keeps the
operator columns of whichever side has the newer `op_ns`.

    alarms       one row per alarm key: the engine's state and the operator's (ack, shelve)
    history      one row per state change (pending is not history: it never reached anyone)
    maintenance  windows per rack or device id: notifications silenced and control locked out
    actions      audit log of control actions, executed or refused
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import structlog

from dcim.core.events import AlarmEvent, AlarmState, Severity
from dcim.core.sqlite import Database, SqliteWriter
from dcim.rules.clock import Clock, SystemClock

log = structlog.get_logger(__name__)

# Errors of a write that did not land (full disk, I/O error, a lock held too long): kept and retried.
DISK_ERRORS = (sqlite3.Error, OSError)
# History and audit rows kept in memory while the disk refuses writes; past it the oldest are dropped.
MAX_APPENDS = 100_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    key TEXT PRIMARY KEY, rule TEXT NOT NULL, subject TEXT NOT NULL, state TEXT NOT NULL,
    severity TEXT NOT NULL, metric TEXT NOT NULL, value REAL, threshold REAL, message TEXT NOT NULL,
    labels TEXT NOT NULL, since_ns INTEGER NOT NULL, fired_ns INTEGER, resolved_ns INTEGER,
    updated_ns INTEGER NOT NULL, notified INTEGER NOT NULL, suppressed TEXT NOT NULL,
    acknowledged INTEGER NOT NULL, ack_by TEXT NOT NULL, ack_comment TEXT NOT NULL, ack_ns INTEGER,
    shelved_until_ns INTEGER, shelved_by TEXT NOT NULL, op_ns INTEGER NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alarms_state ON alarms(state);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, ts_ns INTEGER NOT NULL, record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS maintenance (
    id INTEGER PRIMARY KEY AUTOINCREMENT, subject TEXT NOT NULL, start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL, reason TEXT NOT NULL, created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ns INTEGER NOT NULL, action TEXT NOT NULL, alarm TEXT NOT NULL,
    device TEXT NOT NULL, point TEXT NOT NULL, value TEXT NOT NULL, outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""

# The columns an operator owns; the engine's upsert keeps the database's when its op_ns is newer.
OPERATOR_COLUMNS = (
    "acknowledged", "ack_by", "ack_comment", "ack_ns", "shelved_until_ns", "shelved_by", "op_ns",
)


@dataclass(slots=True)
class AlarmRecord:
    key: str
    rule: str
    subject: str
    state: AlarmState
    severity: Severity
    metric: str = ""
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    since_ns: int = 0  # when the condition was first seen (start of pending)
    fired_ns: int | None = None
    resolved_ns: int | None = None
    updated_ns: int = 0
    # Whether the notifier was told this alarm fired (so a resolve is only sent after a firing was).
    notified: bool = False
    # Why notifications are held back now: "", "inhibited by {alarm key}", "shelved", "maintenance".
    suppressed: str = ""
    acknowledged: bool = False
    ack_by: str = ""
    ack_comment: str = ""
    ack_ns: int | None = None
    shelved_until_ns: int | None = None
    shelved_by: str = ""
    op_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = str(self.state)
        out["severity"] = str(self.severity)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlarmRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["state"] = AlarmState(values["state"])
        values["severity"] = Severity(values["severity"])
        values["labels"] = dict(values.get("labels") or {})
        for flag in ("notified", "acknowledged"):
            values[flag] = bool(values.get(flag))
        return cls(**values)

    def event(self, *, repeat: bool = False) -> AlarmEvent:
        return AlarmEvent(
            key=self.key, rule=self.rule, subject=self.subject, state=self.state, severity=self.severity,
            ts_ns=self.updated_ns, message=self.message, metric=self.metric, value=self.value,
            threshold=self.threshold, labels=dict(self.labels), acknowledged=self.acknowledged, repeat=repeat,
            suppressed=self.suppressed,
        )


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    id: int
    subject: str
    start_ns: int
    end_ns: int
    reason: str
    created_ns: int

    def active(self, now_ns: int) -> bool:
        return self.start_ns <= now_ns < self.end_ns

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AlarmNotFound(KeyError):
    pass


class AlarmNotActive(ValueError):
    pass


_COLUMNS = [f.name for f in fields(AlarmRecord)]
_ROW_COLUMNS = [*_COLUMNS, "seq"]


def _row(record: AlarmRecord, seq: int) -> tuple[Any, ...]:
    data = record.to_dict()
    data["labels"] = json.dumps(record.labels, sort_keys=True)
    data["notified"] = int(record.notified)
    data["acknowledged"] = int(record.acknowledged)
    return (*(data[c] for c in _COLUMNS), seq)


def _record(row: sqlite3.Row) -> AlarmRecord:
    data = dict(row)
    data["labels"] = json.loads(data["labels"])
    return AlarmRecord.from_dict(data)


# The engine's columns only from a newer `seq`, the operator's only from a newer (or equal) `op_ns`. All
# right-hand sides see the stored row as it was before this statement.
_UPSERT = (
    f"INSERT INTO alarms ({', '.join(_ROW_COLUMNS)}) VALUES ({', '.join('?' * len(_ROW_COLUMNS))}) "
    "ON CONFLICT(key) DO UPDATE SET "
    + ", ".join(
        f"{c} = CASE WHEN excluded.seq > alarms.seq THEN excluded.{c} ELSE alarms.{c} END"
        for c in _COLUMNS if c != "key" and c not in OPERATOR_COLUMNS
    )
    + ", "
    + ", ".join(
        f"{c} = CASE WHEN excluded.op_ns >= alarms.op_ns THEN excluded.{c} ELSE alarms.{c} END"
        for c in OPERATOR_COLUMNS
    )
    + ", seq = max(excluded.seq, alarms.seq)"
)
_HISTORY = "INSERT INTO history (key, ts_ns, record) VALUES (?, ?, ?)"
_ACTION = ("INSERT INTO actions (ts_ns, action, alarm, device, point, value, outcome, detail) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


class _Batch:
    """What one flush writes: the latest snapshot of each changed alarm, then the appended rows."""

    __slots__ = ("appends", "since_op", "upserts")

    def __init__(self, upserts: dict[str, tuple[tuple[Any, ...], AlarmRecord]],
                 appends: list[tuple[str, tuple[Any, ...]]], since_op: int) -> None:
        self.upserts = upserts
        self.appends = appends
        self.since_op = since_op


class AlarmStore:
    """Alarms by key, in memory for the engine and the API, persisted in batches.

    `writer`: the process's SQLite writer (the daemon's). Without one the store makes its own and closes it
    in `close`. The synchronous methods that read the file (`get` of an alarm not in memory, `history`,
    `actions`, `add_maintenance`, `remove_maintenance`, `flush`, `close`) wait for the writer: for the CLI
    and tests. The event loop uses their `_async` twins.
    """

    def __init__(self, path: str | Path, *, clock: Clock | None = None, writer: SqliteWriter | None = None) -> None:
        self.path = str(path)
        self.clock: Clock = clock or SystemClock()
        self._own_writer = writer is None
        self._writer = writer or SqliteWriter(name="alarm-store")
        self._db: Database = self._writer.database(self.path, row_factory=sqlite3.Row)
        self._records: dict[str, AlarmRecord] = {}
        # Changes not yet on disk: one snapshot per alarm (the latest wins), then history and audit rows.
        self._upserts: dict[str, tuple[tuple[Any, ...], AlarmRecord]] = {}
        self._appends: list[tuple[str, tuple[Any, ...]]] = []
        self._seqs: dict[str, int] = {}  # the seq of each alarm's last engine write known here
        self._windows: list[MaintenanceWindow] = []
        self.flush_errors = 0
        self.appends_dropped = 0
        # Told about operator changes (ack, shelve) so MQTT and hooks learn of them too.
        self.on_change: Callable[[AlarmRecord], None] | None = None
        # At construction, before the engine reads the records: the loop (if any) has nothing else to do yet.
        rows, self._seq, self._windows = self._db.call_sync(_load, self.clock.now_ns())
        for row in rows:
            record = _record(row)
            self._records[record.key] = record
            self._seqs[record.key] = int(row["seq"])

    # ---- reading ---------------------------------------------------------------------------------------

    def active(self, *, include_pending: bool = False) -> list[AlarmRecord]:
        wanted = {AlarmState.FIRING, AlarmState.PENDING} if include_pending else {AlarmState.FIRING}
        out = [replace(r) for r in self._records.values() if r.state in wanted]
        return sorted(out, key=lambda r: (r.severity != Severity.CRITICAL, -(r.fired_ns or r.since_ns),
                                          r.key))

    def history(self, limit: int = 100) -> list[AlarmRecord]:
        """Most recent state changes first (each a snapshot of the alarm at that change)."""
        self.flush()
        return _history_records(self._db.call_sync(_select_history, max(0, int(limit))))

    async def history_async(self, limit: int = 100) -> list[AlarmRecord]:
        await self.flush_async()
        return _history_records(await self._db.call(_select_history, max(0, int(limit))))

    def _known(self, key: str) -> AlarmRecord | None:
        """The latest state known in memory: live, or changed and not yet written."""
        record = self._records.get(key)
        if record is not None:
            return record
        pending = self._upserts.get(key)
        return pending[1] if pending is not None else None

    def get(self, key: str) -> AlarmRecord:
        record = self._known(key)
        if record is not None:
            return replace(record)
        return _found(key, self._db.call_sync(_select_alarm, key))

    async def get_async(self, key: str) -> AlarmRecord:
        record = self._known(key)
        if record is not None:
            return replace(record)
        return _found(key, await self._db.call(_select_alarm, key))

    def record(self, key: str) -> AlarmRecord | None:
        """The live record (engine use: mutate, then `put`)."""
        return self._records.get(key)

    def records(self) -> list[AlarmRecord]:
        return list(self._records.values())

    # ---- the engine's writes ---------------------------------------------------------------------------

    def put(self, record: AlarmRecord, *, history: bool = False) -> None:
        """Keep `record` as the alarm's state; persist it (pending alarms stay in memory only)."""
        self._records[record.key] = record
        if record.state is not AlarmState.PENDING:
            self._seq += 1
            self._seqs[record.key] = self._seq
            self._queue_upsert(record, self._seq)
        if history:
            self._append(_HISTORY, (record.key, record.updated_ns, json.dumps(record.to_dict())))

    def _queue_upsert(self, record: AlarmRecord, seq: int) -> None:
        # A snapshot: the engine goes on mutating the live record.
        self._upserts.pop(record.key, None)  # re-inserted last: the dict keeps the order of changes
        self._upserts[record.key] = (_row(record, seq), replace(record, labels=dict(record.labels)))

    def _append(self, sql: str, params: tuple[Any, ...]) -> None:
        self._appends.append((sql, params))
        if len(self._appends) > MAX_APPENDS:
            excess = len(self._appends) - MAX_APPENDS
            del self._appends[:excess]
            if not self.appends_dropped:
                log.error("alarm store cannot write: oldest history rows dropped from memory",
                          kept=MAX_APPENDS)
            self.appends_dropped += excess

    def forget(self, key: str) -> None:
        """Drop a resolved or cancelled alarm from memory (its row stays in the database)."""
        self._records.pop(key, None)

    def log_action(self, ts_ns: int, action: str, alarm: str, device: str, point: str, value: Any,
                   outcome: str, detail: str) -> None:
        self._append(_ACTION, (ts_ns, action, alarm, device, point, json.dumps(value), outcome, detail))

    def actions(self, limit: int = 100) -> list[dict[str, Any]]:
        self.flush()
        return [dict(r) for r in self._db.call_sync(_select_actions, limit)]

    async def actions_async(self, limit: int = 100) -> list[dict[str, Any]]:
        await self.flush_async()
        return [dict(r) for r in await self._db.call(_select_actions, limit)]

    # ---- the operator's writes -------------------------------------------------------------------------

    def _operate(self, key: str, row: sqlite3.Row | None = None, *, read: bool = True) -> AlarmRecord:
        record = self._known(key)
        if record is None and read:
            # Not known here: a `dcim alarms` process working on the file while the daemon owns the alarm.
            row = self._db.call_sync(_select_alarm, key)
        if record is None and row is not None:
            record = _record(row)
            self._seqs[key] = int(row["seq"])
            if record.state is AlarmState.FIRING:
                self._records[key] = record
        if record is None:
            raise AlarmNotFound(key)
        if record.state is not AlarmState.FIRING:
            raise AlarmNotActive(f"alarm {key} is {record.state}, not firing")
        return record

    async def _operate_async(self, key: str) -> AlarmRecord:
        row = None if self._known(key) is not None else await self._db.call(_select_alarm, key)
        return self._operate(key, row, read=False)

    def _changed(self, record: AlarmRecord) -> AlarmRecord:
        record.op_ns = max(self.clock.now_ns(), record.op_ns + 1)
        # The engine's seq as known here, not a new one: a CLI's copy of the engine's columns may be stale,
        # and must not win over what the daemon wrote meanwhile.
        self._queue_upsert(record, self._seqs.get(record.key, 0))
        if self.on_change is not None:
            self.on_change(replace(record))
        return replace(record)

    def _ack(self, record: AlarmRecord, user: str, comment: str) -> AlarmRecord:
        record.acknowledged, record.ack_by, record.ack_comment = True, user, comment
        record.ack_ns = self.clock.now_ns()
        return self._changed(record)

    def acknowledge(self, key: str, user: str, comment: str = "") -> AlarmRecord:
        return self._ack(self._operate(key), user, comment)

    async def acknowledge_async(self, key: str, user: str, comment: str = "") -> AlarmRecord:
        return self._ack(await self._operate_async(key), user, comment)

    def _shelve(self, record: AlarmRecord, until_ns: int, user: str) -> AlarmRecord:
        record.shelved_until_ns, record.shelved_by = int(until_ns), user
        return self._changed(record)

    def _check_until(self, until_ns: int) -> None:
        if until_ns <= self.clock.now_ns():
            raise ValueError("shelve until a time in the future")

    def shelve(self, key: str, until_ns: int, user: str) -> AlarmRecord:
        self._check_until(until_ns)
        return self._shelve(self._operate(key), until_ns, user)

    async def shelve_async(self, key: str, until_ns: int, user: str) -> AlarmRecord:
        self._check_until(until_ns)
        return self._shelve(await self._operate_async(key), until_ns, user)

    def _unshelve(self, record: AlarmRecord) -> AlarmRecord:
        record.shelved_until_ns, record.shelved_by = None, ""
        return self._changed(record)

    def unshelve(self, key: str) -> AlarmRecord:
        return self._unshelve(self._operate(key))

    async def unshelve_async(self, key: str) -> AlarmRecord:
        return self._unshelve(await self._operate_async(key))

    def _window(self, subject: str, start_ns: int, end_ns: int, reason: str) -> MaintenanceWindow:
        if end_ns <= start_ns:
            raise ValueError("a maintenance window must end after it starts")
        return MaintenanceWindow(0, subject, int(start_ns), int(end_ns), reason, self.clock.now_ns())

    def _added(self, window: MaintenanceWindow, window_id: int) -> MaintenanceWindow:
        window = replace(window, id=window_id)
        self._windows.append(window)
        return window

    def add_maintenance(self, subject: str, start_ns: int, end_ns: int, reason: str) -> MaintenanceWindow:
        window = self._window(subject, start_ns, end_ns, reason)
        return self._added(window, self._db.call_sync(_insert_window, window))

    async def add_maintenance_async(self, subject: str, start_ns: int, end_ns: int,
                                    reason: str) -> MaintenanceWindow:
        window = self._window(subject, start_ns, end_ns, reason)
        return self._added(window, await self._db.call(_insert_window, window))

    def remove_maintenance(self, window_id: int) -> None:
        self._db.call_sync(_delete_window, window_id)
        self._windows = [w for w in self._windows if w.id != window_id]

    def maintenance(self, now_ns: int | None = None) -> list[MaintenanceWindow]:
        """Windows not yet over (all of them active or future), or those active at `now_ns`."""
        if now_ns is None:
            return list(self._windows)
        return [w for w in self._windows if w.active(now_ns)]

    def in_maintenance(self, subjects: list[str] | tuple[str, ...], now_ns: int) -> MaintenanceWindow | None:
        for window in self._windows:
            if window.subject in subjects and window.active(now_ns):
                return window
        return None

    # ---- persistence -----------------------------------------------------------------------------------

    def _take(self) -> _Batch:
        batch = _Batch(self._upserts, self._appends,
                       min((r.op_ns for r in self._records.values()), default=0))
        self._upserts, self._appends = {}, []
        return batch

    def _restore(self, batch: _Batch) -> None:
        """A flush failed: its changes go back in front of those made since (a newer snapshot of the same
        alarm wins over the failed one)."""
        self.flush_errors += 1
        self._upserts = {**{k: v for k, v in batch.upserts.items() if k not in self._upserts}, **self._upserts}
        appends, self._appends = self._appends, []
        for sql, params in [*batch.appends, *appends]:
            self._append(sql, params)

    def _merge(self, outside: list[AlarmRecord], windows: list[MaintenanceWindow]) -> None:
        """Apply operator changes made by another process (newer op_ns) to the live records."""
        self._windows = windows
        for theirs in outside:
            mine = self._records.get(theirs.key)
            if mine is None or theirs.op_ns <= mine.op_ns:
                continue
            for column in OPERATOR_COLUMNS:
                setattr(mine, column, getattr(theirs, column))
            if self.on_change is not None:
                self.on_change(replace(mine))

    def _job(self, batch: _Batch) -> tuple[Any, ...]:
        return ([row for row, _ in batch.upserts.values()], batch.appends, batch.since_op, self.clock.now_ns())

    def flush(self) -> None:
        """Write queued changes now, waiting for the writer (CLI, tests)."""
        batch = self._take()
        try:
            outside, windows = self._db.call_sync(_write, *self._job(batch))
        except DISK_ERRORS:
            self._restore(batch)
            raise
        self._merge(outside, windows)

    async def flush_async(self) -> None:
        """Write queued changes on the writer thread; the records stay the loop's alone. Flushes land in
        the order they were called, whichever task calls them."""
        batch = self._take()
        # Submitted before any other task can run: the writer keeps this order.
        write = await self._db.submit(_write, *self._job(batch))
        # Restored by a callback: also when the caller is cancelled while the write runs on.
        write.add_done_callback(
            lambda done: self._restore(batch) if not done.cancelled() and done.exception() else None)
        outside, windows = await asyncio.shield(write)
        self._merge(outside, windows)

    def close(self) -> None:
        try:
            self.flush()
        except DISK_ERRORS as err:
            log.error("alarm store: changes not written at close", error=str(err), lost=len(self._upserts))
        finally:
            self._db.close_sync()
            if self._own_writer:
                self._writer.close_sync()

    async def close_async(self) -> None:
        try:
            await self.flush_async()
        except DISK_ERRORS as err:
            log.error("alarm store: changes not written at close", error=str(err), lost=len(self._upserts))
        finally:
            await self._db.close()
            if self._own_writer:
                await self._writer.close()


def _found(key: str, row: sqlite3.Row | None) -> AlarmRecord:
    if row is None:
        raise AlarmNotFound(key)
    return _record(row)


def _history_records(rows: list[sqlite3.Row]) -> list[AlarmRecord]:
    return [AlarmRecord.from_dict(json.loads(r["record"])) for r in rows]


# ---- jobs on the writer thread (inside its transaction) ----------------------------------------------

def _load_windows(db: sqlite3.Connection, now_ns: int) -> list[MaintenanceWindow]:
    rows = db.execute("SELECT * FROM maintenance WHERE end_ns > ? ORDER BY start_ns", (now_ns,)).fetchall()
    return [MaintenanceWindow(**dict(r)) for r in rows]


def _load(db: sqlite3.Connection, now_ns: int) -> tuple[list[sqlite3.Row], int, list[MaintenanceWindow]]:
    # Statement by statement: executescript would commit the writer's transaction.
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    columns = {r["name"] for r in db.execute("PRAGMA table_info(alarms)")}
    if "seq" not in columns:
        # A file from before `seq`: its rows are all older than anything written from now on.
        db.execute("ALTER TABLE alarms ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
    rows = db.execute("SELECT * FROM alarms WHERE state = ?", (AlarmState.FIRING.value,)).fetchall()
    seq = int(db.execute("SELECT coalesce(max(seq), 0) FROM alarms").fetchone()[0])
    return rows, seq, _load_windows(db, now_ns)


def _write(db: sqlite3.Connection, upserts: list[tuple[Any, ...]], appends: list[tuple[str, tuple[Any, ...]]],
           since_op: int, now_ns: int) -> tuple[list[AlarmRecord], list[MaintenanceWindow]]:
    db.executemany(_UPSERT, upserts)
    for sql, params in appends:
        db.execute(sql, params)
    rows = db.execute(
        "SELECT * FROM alarms WHERE state = ? AND op_ns > ?", (AlarmState.FIRING.value, since_op)
    ).fetchall()
    return [_record(r) for r in rows], _load_windows(db, now_ns)


def _select_alarm(db: sqlite3.Connection, key: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = db.execute("SELECT * FROM alarms WHERE key = ?", (key,)).fetchone()
    return row


def _select_history(db: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    rows: list[sqlite3.Row] = db.execute("SELECT record FROM history ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return rows


def _select_actions(db: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    rows: list[sqlite3.Row] = db.execute("SELECT * FROM actions ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return rows


def _insert_window(db: sqlite3.Connection, window: MaintenanceWindow) -> int:
    cursor = db.execute(
        "INSERT INTO maintenance (subject, start_ns, end_ns, reason, created_ns) VALUES (?, ?, ?, ?, ?)",
        (window.subject, window.start_ns, window.end_ns, window.reason, window.created_ns),
    )
    return int(cursor.lastrowid or 0)


def _delete_window(db: sqlite3.Connection, window_id: int) -> None:
    db.execute("DELETE FROM maintenance WHERE id = ?", (window_id,))
