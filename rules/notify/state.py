"""What the notifier must remember across a restart: its groups, with the state each alarm was last
notified in and when each group last sent (so reminders keep their rhythm and nothing is sent twice).

One SQLite file, one worker thread: the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from rules.notify.router import Group

log = structlog.get_logger(__name__)

_SCHEMA = "CREATE TABLE IF NOT EXISTS groups (key TEXT PRIMARY KEY, data TEXT NOT NULL)"


class NotifyState:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def _call(self, fn: Any, *args: Any) -> Any:
        assert self._executor is not None, "notify state is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> list[Group]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify-state")
        rows: list[tuple[str, str]] = await self._call(self._open)
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
            await self._call(self._save, [], bad)
        return groups

    def _open(self) -> list[tuple[str, str]]:
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
        self._db = db
        rows: list[tuple[str, str]] = db.execute("SELECT key, data FROM groups").fetchall()
        return rows

    async def save(self, live: list[Group], gone: list[str]) -> None:
        if not live and not gone:
            return
        rows = [(g.key, json.dumps(g.to_dict(), separators=(",", ":"))) for g in live]
        await self._call(self._save, rows, [(k,) for k in gone])

    def _save(self, rows: list[tuple[str, str]], gone: list[tuple[str]]) -> None:
        assert self._db is not None
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO groups (key, data) VALUES (?, ?)", rows)
        self._db.executemany("DELETE FROM groups WHERE key = ?", gone)
        self._db.execute("COMMIT")

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._call(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
