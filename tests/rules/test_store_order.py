"""The alarm store never writes an older state over a newer one: the cause of alarms revived after a
restart (an older FIRING row landing after the newer RESOLVED one)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from dcim.core.events import AlarmState, Severity
from dcim.core.sqlite import SqliteWriter
from dcim.rules.clock import FakeClock
from dcim.rules.store import _UPSERT, AlarmRecord, AlarmStore, _row

KEY = "cdu-pump-fault/cdu-1"


def firing(clock: FakeClock) -> AlarmRecord:
    now = clock.now_ns()
    return AlarmRecord(KEY, "cdu-pump-fault", "cdu-1", AlarmState.FIRING, Severity.CRITICAL, message="pump",
                       since_ns=now, fired_ns=now, updated_ns=now, notified=True)


def resolve(store: AlarmStore, record: AlarmRecord, clock: FakeClock) -> None:
    record.state, record.resolved_ns, record.updated_ns = AlarmState.RESOLVED, clock.now_ns(), clock.now_ns()
    store.put(record, history=True)
    store.forget(record.key)


def stored_state(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("SELECT state FROM alarms WHERE key = ?", (KEY,)).fetchone()[0])


def test_a_late_older_write_does_not_revive_a_resolved_alarm(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "alarms.db"
    store = AlarmStore(path, clock=clock)
    record = firing(clock)
    store.put(record, history=True)
    old_row = _row(record, store._seqs[KEY])  # the FIRING snapshot as a flush would write it
    clock.advance(1)
    resolve(store, record, clock)
    store.flush()
    # The FIRING write arrives after the RESOLVED one (as two unordered flush threads could make it).
    with sqlite3.connect(path) as db:
        db.execute(_UPSERT, old_row)
    assert stored_state(path) == "resolved"
    store.close()
    assert AlarmStore(path, clock=clock).active() == []


def test_an_ack_from_a_stale_copy_keeps_the_newer_resolve(tmp_path: Path) -> None:
    """`dcim alarms ack` reads the firing row; the daemon resolves it and writes; the CLI then writes its
    acknowledgement with its (stale) copy of the engine's columns: the alarm stays resolved."""
    clock = FakeClock()
    path = tmp_path / "alarms.db"
    daemon = AlarmStore(path, clock=clock)
    record = firing(clock)
    daemon.put(record, history=True)
    daemon.flush()
    cli = AlarmStore(path, clock=clock)
    assert [a.key for a in cli.active()] == [KEY]
    clock.advance(1)
    resolve(daemon, record, clock)
    daemon.flush()
    clock.advance(1)
    cli.acknowledge(KEY, "alice")
    cli.close()
    assert stored_state(path) == "resolved"
    daemon.close()
    restarted = AlarmStore(path, clock=clock)
    assert restarted.active() == []
    assert restarted.get(KEY).state is AlarmState.RESOLVED


def test_a_restart_continues_the_sequence(tmp_path: Path) -> None:
    """The next daemon's writes are newer than anything in the file, whatever its clock says."""
    clock = FakeClock()
    path = tmp_path / "alarms.db"
    first = AlarmStore(path, clock=clock)
    record = firing(clock)
    first.put(record)
    resolve(first, record, clock)
    first.close()
    second = AlarmStore(path, clock=clock)
    again = firing(clock)  # fires again, with the same timestamps as before
    second.put(again, history=True)
    second.close()
    assert stored_state(path) == "firing"
    assert [a.key for a in AlarmStore(path, clock=clock).active()] == [KEY]


async def test_concurrent_flushes_land_in_the_order_they_were_called(tmp_path: Path) -> None:
    """The tick's flush and the HTTP API's flush (history) race on the loop: on one writer the file ends
    in the state memory has, every time."""
    clock = FakeClock()
    path = tmp_path / "alarms.db"
    writer = SqliteWriter(name="flushes", max_jobs=2)
    store = AlarmStore(path, clock=clock, writer=writer)
    record = firing(clock)
    store.put(record, history=True)
    flushes = []
    for n in range(201):
        clock.advance(1)
        if record.state is AlarmState.FIRING:
            resolve(store, record, clock)
        else:
            record = firing(clock)
            store.put(record, history=True)
        flushes.append(asyncio.ensure_future(store.flush_async()))
        if n % 3 == 0:
            flushes.append(asyncio.ensure_future(store.history_async(5)))
    await asyncio.gather(*flushes)
    assert store.active() == []  # 201 changes after the first firing: resolved
    await store.close_async()
    await writer.close()
    assert stored_state(path) == "resolved"
    assert AlarmStore(path, clock=clock).active() == []


def test_a_file_from_before_seq_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = AlarmStore(path)
    store.put(firing(FakeClock()))
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE alarms DROP COLUMN seq")
    reopened = AlarmStore(path)
    assert [a.key for a in reopened.active()] == [KEY]
    reopened.close()
    with sqlite3.connect(path) as db:
        assert "seq" in {r[1] for r in db.execute("PRAGMA table_info(alarms)")}
