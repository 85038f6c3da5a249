"""The console's actions on a real alarm store and audit trail: the store's own checks, one chained audit
record per action, and an action that happened is never hidden by an audit trail that cannot be written."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dcim.app.console.actions import Actions
from dcim.core.audit import AuditLog
from dcim.core.events import AlarmState, Severity
from dcim.rules.store import AlarmNotActive, AlarmNotFound, AlarmRecord, AlarmStore

KEY = "cdu-pump-fault/cdu-1"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AlarmStore]:
    store = AlarmStore(tmp_path / "alarms.db")
    now = time.time_ns()
    store.put(AlarmRecord(KEY, "cdu-pump-fault", "cdu-1", AlarmState.FIRING, Severity.CRITICAL,
                          message="pump fault", since_ns=now, fired_ns=now, updated_ns=now), history=True)
    store.put(AlarmRecord("old/cdu-1", "old", "cdu-1", AlarmState.RESOLVED, Severity.WARNING, updated_ns=now))
    try:
        yield store
    finally:
        await store.close_async()


async def test_each_action_is_the_stores_and_leaves_one_chained_record(store: AlarmStore, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    actions = Actions(store, audit)
    done = await actions.acknowledge(KEY, "alice", "on it")
    assert (done.audit_seq, done.audit_error) == (1, "")
    await actions.shelve(KEY, 30, "alice")
    await actions.unshelve(KEY, "bob")
    await actions.maintenance("A01", 90, "PSU swap", "bob")
    record = store.get(KEY)
    assert (record.acknowledged, record.ack_by, record.ack_comment, record.shelved_until_ns) == (
        True, "alice", "on it", None)
    [window] = store.maintenance()
    assert (window.subject, window.reason) == ("A01", "PSU swap")
    assert [(r["origin"], r["point"], r["value"], r["outcome"]) for r in audit.records()] == [
        ("console:alice", "alarm_ack", KEY, "acknowledged"),
        ("console:alice", "alarm_shelve", KEY, "shelved"),
        ("console:bob", "alarm_unshelve", KEY, "unshelved"),
        ("console:bob", "maintenance", "A01", "window opened"),
    ]
    assert audit.verify() == (4, None)


async def test_what_the_store_refuses_is_not_recorded(store: AlarmStore, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    actions = Actions(store, audit)
    with pytest.raises(AlarmNotFound):
        await actions.acknowledge("no/such", "alice", "")
    with pytest.raises(AlarmNotActive):
        await actions.acknowledge("old/cdu-1", "alice", "")
    with pytest.raises(ValueError, match="at most"):
        await actions.shelve(KEY, 8 * 24 * 60, "alice")
    with pytest.raises(ValueError, match="more than 0"):
        await actions.maintenance("A01", 0, "", "alice")
    assert list(audit.records()) == []


async def test_an_audit_trail_that_cannot_be_written_does_not_hide_the_action(store: AlarmStore,
                                                                              tmp_path: Path) -> None:
    blocked = tmp_path / "audit.log"
    blocked.mkdir()  # a directory where the file should be: every append fails
    done = await Actions(store, AuditLog(blocked)).acknowledge(KEY, "alice", "")
    assert done.audit_seq == 0 and done.audit_error
    assert store.get(KEY).acknowledged
