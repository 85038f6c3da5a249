"""The audit trail of writes: an append-only JSON-lines file, each record chained to the one before by hash.

One line per write attempt, whatever its outcome (verified, unverified, failed, refused, dry-run), and one
per operator action on an alarm (`alarm_action`):

    {"seq": 7, "ts_ns": ..., "time": "2026-12-01T22:50:01.123Z", "origin": "cli:alice", "device": "cdu-1",
     "point": "flow_setpoint_lpm", "value": 450, "old": 400.0, "new": 450.0, "outcome": "verified",
     "reason": "", "raw": "451", "address": "holding 101", "prev": "<hash of record 6>", "hash": "<hash>"}

    hash = SHA-256( prev + "\\n" + canonical JSON of the record without `prev` and `hash` )

Canonical JSON: keys sorted, no spaces, UTF-8. The first record's `prev` is 64 zeros. Editing any field of
a record changes its hash; recomputing that hash to hide the edit breaks the next record's `prev`. So
`verify()` names the first record that was changed (or the one after it, if the forger also rewrote the
hash): the file is tamper-evident, not tamper-proof. A copy of every record also leaves the host (MQTT,
the database), which a forger would have to rewrite as well.

Appends are safe between processes (the daemon, and `dcim write --direct` when no daemon runs): the file
is locked (flock) while the last hash is read and the new line written, and every record is fsynced
before `append` returns. Blocking I/O: call `append` from a worker thread in an event loop.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
_TAIL_CHUNK = 64 * 1024


def alarm_action(origin: str, subject: str, point: str, value: str, outcome: str, reason: str,
                 ts_ns: int) -> dict[str, Any]:
    """The record of an operator's action on an alarm (acknowledge, shelve, unshelve, a maintenance window),
    whichever way it came (console, HTTP API, `dcim alarms`): `point` names the action (`alarm_ack`,
    `alarm_shelve`, `alarm_unshelve`, `maintenance`), `value` the alarm key or the window's subject."""
    return {"ts_ns": ts_ns, "origin": origin, "device": subject, "point": point, "value": value, "old": None,
            "new": None, "outcome": outcome, "reason": reason, "raw": "", "address": "", "stops": False}


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


def chain_hash(prev: str, record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k not in ("prev", "hash")}
    return hashlib.sha256(prev.encode() + b"\n" + canonical(body)).hexdigest()


@dataclass(frozen=True, slots=True)
class Broken:
    """The first record that does not match: its line number (1-based), its seq if readable, and why."""

    line: int
    seq: int | None
    reason: str

    def __str__(self) -> str:
        seq = f" (seq {self.seq})" if self.seq is not None else ""
        return f"line {self.line}{seq}: {self.reason}"


class AuditLog:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    # ---- writing --------------------------------------------------------------------------------------

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Chain `fields` to the last record, write it durably, return the stored record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                last, ends_clean = _last_record(fd)
                prev = str(last.get("hash", GENESIS)) if last is not None else GENESIS
                seq = int(last.get("seq", 0)) + 1 if last is not None else 1
                ts_ns = int(fields.get("ts_ns") or 0)
                record: dict[str, Any] = {"seq": seq, **fields, "ts_ns": ts_ns, "time": _iso(ts_ns), "prev": prev}
                record["hash"] = chain_hash(prev, record)
                # A torn last line (a crash mid-write) stays as it is and fails verification; ours starts clean.
                line = (b"" if ends_clean else b"\n") + canonical(record) + b"\n"
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)  # also releases the lock
        return record

    # ---- reading --------------------------------------------------------------------------------------

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable record, oldest first (unreadable lines are skipped: `verify` reports them)."""
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            for raw in fh:
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record

    def verify(self) -> tuple[int, Broken | None]:
        """(records checked, the first broken one or None)."""
        if not self.path.exists():
            return 0, None
        prev = GENESIS
        count = 0
        with self.path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    record = json.loads(raw)
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                except ValueError as err:
                    return count, Broken(number, None, f"not a record ({err})")
                seq = record.get("seq") if isinstance(record.get("seq"), int) else None
                if record.get("prev") != prev:
                    return count, Broken(number, seq, "its prev does not match the previous record's hash "
                                                      "(a record was removed, inserted or rewritten)")
                if record.get("hash") != chain_hash(prev, record):
                    return count, Broken(number, seq, "its content does not match its hash (edited)")
                prev = str(record["hash"])
                count += 1
        return count, None


def _iso(ts_ns: int) -> str:
    moment = dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _last_record(fd: int) -> tuple[dict[str, Any] | None, bool]:
    """The last complete record of the file, and whether the file ends with a newline."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return None, True
    start = max(0, size - _TAIL_CHUNK)
    tail = os.pread(fd, size - start, start)
    while start > 0 and tail.count(b"\n") < 2:
        # A record longer than the chunk: read further back.
        start = max(0, start - _TAIL_CHUNK)
        tail = os.pread(fd, size - start, start)
    ends_clean = tail.endswith(b"\n")
    for raw in reversed(tail.splitlines()):
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict) and "hash" in record:
            return record, ends_clean
    return None, ends_clean
