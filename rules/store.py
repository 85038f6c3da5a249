"""Alarm state and history in SQLite, so a restart neither loses an alarm nor notifies it again.

The engine and the HTTP API work on the in-memory records; every change is queued and written in
batches by `flush()` (the service runs it in a worker thread once per tick, so SQLite never blocks the
event loop; the operator's rare calls, from the HTTP API or the CLI, run one short statement where they
are made). The database is also the channel for `dcim alarms` run from a shell while the daemon runs:
an acknowledgement or shelve written there carries a newer `op_ns`, and the daemon's next flush picks it
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
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dcim.core.events import AlarmEvent, AlarmState, Severity
from rules.clock import Clock, SystemClock

SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    key TEXT PRIMARY KEY, rule TEXT NOT NULL, subject TEXT NOT NULL, state TEXT NOT NULL,
    severity TEXT NOT NULL, metric TEXT NOT NULL, value REAL, threshold REAL, message TEXT NOT NULL,
    labels TEXT NOT NULL, since_ns INTEGER NOT NULL, fired_ns INTEGER, resolved_ns INTEGER,
    updated_ns INTEGER NOT NULL, notified INTEGER NOT NULL, suppressed TEXT NOT NULL,
    acknowledged INTEGER NOT NULL, ack_by TEXT NOT NULL, ack_comment TEXT NOT NULL, ack_ns INTEGER,
    shelved_until_ns INTEGER, shelved_by TEXT NOT NULL, op_ns INTEGER NOT NULL
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


def _row(record: AlarmRecord) -> tuple[Any, ...]:
    data = record.to_dict()
    data["labels"] = json.dumps(record.labels, sort_keys=True)
    data["notified"] = int(record.notified)
    data["acknowledged"] = int(record.acknowledged)
    return tuple(data[c] for c in _COLUMNS)


def _record(row: sqlite3.Row) -> AlarmRecord:
    data = dict(row)
    data["labels"] = json.loads(data["labels"])
    return AlarmRecord.from_dict(data)


_UPSERT = (
    f"INSERT INTO alarms ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    "ON CONFLICT(key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "key" and c not in OPERATOR_COLUMNS)
    + ", "
    + ", ".join(
        f"{c} = CASE WHEN excluded.op_ns >= alarms.op_ns THEN excluded.{c} ELSE alarms.{c} END"
        for c in OPERATOR_COLUMNS
    )
)


class AlarmStore:
    """Alarms by key, in memory for the engine and the API, persisted in batches."""

    def __init__(self, path: str | Path, *, clock: Clock | None = None) -> None:
        self.path = str(path)
        self.clock: Clock = clock or SystemClock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # One connection, used by one thread at a time (the loop at start-up, then the flush worker).
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._records: dict[str, AlarmRecord] = {}
        self._queue: list[tuple[str, tuple[Any, ...]]] = []
        self._windows: list[MaintenanceWindow] = []
        self.flush_errors = 0
        # Told about operator changes (ack, shelve) so MQTT and hooks learn of them too.
        self.on_change: Callable[[AlarmRecord], None] | None = None
        rows = self._db.execute("SELECT * FROM alarms WHERE state = ?", (AlarmState.FIRING.value,)).fetchall()
        for row in rows:
            record = _record(row)
            self._records[record.key] = record
        self._windows = self._load_windows()

    # ---- reading ---------------------------------------------------------------------------------------

    def active(self, *, include_pending: bool = False) -> list[AlarmRecord]:
        wanted = {AlarmState.FIRING, AlarmState.PENDING} if include_pending else {AlarmState.FIRING}
        out = [replace(r) for r in self._records.values() if r.state in wanted]
        return sorted(out, key=lambda r: (r.severity != Severity.CRITICAL, -(r.fired_ns or r.since_ns),
                                          r.key))

    def history(self, limit: int = 100) -> list[AlarmRecord]:
        """Most recent state changes first (each a snapshot of the alarm at that change)."""
        self.flush()
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM history ORDER BY id DESC LIMIT ?", (max(0, int(limit)),)
            ).fetchall()
        return [AlarmRecord.from_dict(json.loads(r["record"])) for r in rows]

    def get(self, key: str) -> AlarmRecord:
        record = self._records.get(key)
        if record is not None:
            return replace(record)
        with self._lock:
            row = self._db.execute("SELECT * FROM alarms WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise AlarmNotFound(key)
        return _record(row)

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
            self._queue.append((_UPSERT, _row(record)))
        if history:
            self._queue.append(("INSERT INTO history (key, ts_ns, record) VALUES (?, ?, ?)",
                                (record.key, record.updated_ns, json.dumps(record.to_dict()))))

    def forget(self, key: str) -> None:
        """Drop a resolved or cancelled alarm from memory (its row stays in the database)."""
        self._records.pop(key, None)

    def log_action(self, ts_ns: int, action: str, alarm: str, device: str, point: str, value: Any,
                   outcome: str, detail: str) -> None:
        self._queue.append((
            "INSERT INTO actions (ts_ns, action, alarm, device, point, value, outcome, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (ts_ns, action, alarm, device, point, json.dumps(value), outcome, detail),
        ))

    def actions(self, limit: int = 100) -> list[dict[str, Any]]:
        self.flush()
        with self._lock:
            rows = self._db.execute("SELECT * FROM actions ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    # ---- the operator's writes -------------------------------------------------------------------------

    def _operate(self, key: str) -> AlarmRecord:
        record = self._records.get(key)
        if record is None:
            # Not in memory: a `dcim alarms` process working on the file while the daemon owns the alarm.
            with self._lock:
                row = self._db.execute("SELECT * FROM alarms WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise AlarmNotFound(key)
            record = _record(row)
            if record.state is AlarmState.FIRING:
                self._records[key] = record
        if record.state is not AlarmState.FIRING:
            raise AlarmNotActive(f"alarm {key} is {record.state}, not firing")
        return record

    def _changed(self, record: AlarmRecord) -> AlarmRecord:
        record.op_ns = max(self.clock.now_ns(), record.op_ns + 1)
        self._queue.append((_UPSERT, _row(record)))
        if self.on_change is not None:
            self.on_change(replace(record))
        return replace(record)

    def acknowledge(self, key: str, user: str, comment: str = "") -> AlarmRecord:
        record = self._operate(key)
        record.acknowledged, record.ack_by, record.ack_comment = True, user, comment
        record.ack_ns = self.clock.now_ns()
        return self._changed(record)

    def shelve(self, key: str, until_ns: int, user: str) -> AlarmRecord:
        if until_ns <= self.clock.now_ns():
            raise ValueError("shelve until a time in the future")
        record = self._operate(key)
        record.shelved_until_ns, record.shelved_by = int(until_ns), user
        return self._changed(record)

    def unshelve(self, key: str) -> AlarmRecord:
        record = self._operate(key)
        record.shelved_until_ns, record.shelved_by = None, ""
        return self._changed(record)

    def add_maintenance(self, subject: str, start_ns: int, end_ns: int, reason: str) -> MaintenanceWindow:
        if end_ns <= start_ns:
            raise ValueError("a maintenance window must end after it starts")
        now = self.clock.now_ns()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO maintenance (subject, start_ns, end_ns, reason, created_ns) "
                "VALUES (?, ?, ?, ?, ?)",
                (subject, int(start_ns), int(end_ns), reason, now),
            )
        window = MaintenanceWindow(int(cursor.lastrowid or 0), subject, int(start_ns), int(end_ns),
                                   reason, now)
        self._windows.append(window)
        return window

    def remove_maintenance(self, window_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM maintenance WHERE id = ?", (window_id,))
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

    def _load_windows(self) -> list[MaintenanceWindow]:
        now = self.clock.now_ns()
        rows = self._db.execute(
            "SELECT * FROM maintenance WHERE end_ns > ? ORDER BY start_ns", (now,)
        ).fetchall()
        return [MaintenanceWindow(**dict(r)) for r in rows]

    def _write(self, queue: list[tuple[str, tuple[Any, ...]]], since_op: int) -> tuple[
            list[AlarmRecord], list[MaintenanceWindow]]:
        with self._lock:
            if queue:
                self._db.execute("BEGIN")
                try:
                    for sql, params in queue:
                        self._db.execute(sql, params)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            rows = self._db.execute(
                "SELECT * FROM alarms WHERE state = ? AND op_ns > ?", (AlarmState.FIRING.value, since_op)
            ).fetchall()
            windows = self._load_windows()
        return [_record(r) for r in rows], windows

    def _take(self) -> tuple[list[tuple[str, tuple[Any, ...]]], int]:
        queue, self._queue = self._queue, []
        since = min((r.op_ns for r in self._records.values()), default=0)
        return queue, since

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

    def flush(self) -> None:
        """Write queued changes now, on this thread (CLI, tests, shutdown)."""
        queue, since = self._take()
        try:
            outside, windows = self._write(queue, since)
        except sqlite3.Error:
            self._queue[:0] = queue
            self.flush_errors += 1
            raise
        self._merge(outside, windows)

    async def flush_async(self) -> None:
        """Write queued changes in a worker thread; the records stay the loop's alone."""
        queue, since = self._take()
        try:
            outside, windows = await asyncio.to_thread(self._write, queue, since)
        except sqlite3.Error:
            # Keep the changes for the next attempt (a locked database is transient).
            self._queue[:0] = queue
            self.flush_errors += 1
            raise
        self._merge(outside, windows)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._lock:
                self._db.close()
