"""What the notifier must remember across a restart: its groups, with the state each alarm was last
notified in and when each group last sent (so reminders keep their rhythm and nothing is sent twice).

One SQLite file on the process's SQLite writer (dcim.core.sqlite; without one it makes its own): the
event loop never waits on the disk.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import structlog

from dcim.core.sqlite import Database, SqliteWriter
from dcim.rules.notify.router import Group

log = structlog.get_logger(__name__)

_SCHEMA = "CREATE TABLE IF NOT EXISTS groups (key TEXT PRIMARY KEY, data TEXT NOT NULL)"


class NotifyState:
    def __init__(self, path: Path, *, writer: SqliteWriter | None = None) -> None:
        self.path = path
        self._writer = writer
        self._own_writer = writer is None
        self._db: Database | None = None

    async def open(self) -> list[Group]:
        if self._writer is None:
            self._writer = SqliteWriter(name="notify-state")
        self._db = self._writer.database(self.path)
        rows: list[tuple[str, str]] = await self._db.call(_open)
        groups, bad = [], []
        for key, data in rows:
            try:
                groups.append(Group.from_dict(json.loads(data)))
            except (ValueError, KeyError, TypeError) as err:
                # One unreadable row must not cost the others: logged and deleted. Its alarms, if still
                # firing, are notified again when the rule engine next announces them.
                log.warning("notify state: unreadable group dropped", group=key, error=str(err))
                bad.append((key,))
        if bad:
            await self._db.call(_save, [], bad)
        return groups

    async def save(self, live: list[Group], gone: list[str]) -> None:
        if not live and not gone:
            return
        assert self._db is not None, "notify state is not open"
        rows = [(g.key, json.dumps(g.to_dict(), separators=(",", ":"))) for g in live]
        await self._db.call(_save, rows, [(k,) for k in gone])

    async def close(self) -> None:
        if self._db is None:
            return
        await self._db.close()
        self._db = None
        if self._own_writer and self._writer is not None:
            await self._writer.close()
            self._writer = None


# ---- jobs on the writer thread (inside its transaction) ----------------------------------------------

def _open(db: sqlite3.Connection) -> list[tuple[str, str]]:
    db.execute(_SCHEMA)
    rows: list[tuple[str, str]] = db.execute("SELECT key, data FROM groups").fetchall()
    return rows


def _save(db: sqlite3.Connection, rows: list[tuple[str, str]], gone: list[tuple[str]]) -> None:
    db.executemany("INSERT OR REPLACE INTO groups (key, data) VALUES (?, ?)", rows)
    db.executemany("DELETE FROM groups WHERE key = ?", gone)
