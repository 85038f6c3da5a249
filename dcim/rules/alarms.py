"""The alarm state machine of one rule on one subject.

    (clear) --condition--> PENDING --held for `for`--> FIRING --clear for `clear_after`--> RESOLVED
                 ^            |                          |  ^
                 '--cleared---'          severity changes: up after `for`, down after `clear_after`

The condition is judged with hysteresis: once an alarm is at a severity, the value must come back past
that threshold by `hysteresis` before it counts as clear, so a value wobbling on a threshold neither
fires nor resolves on every sample. No data is not a verdict: a missing value holds the state as it is.
PENDING lives in memory only; FIRING and RESOLVED are events (stored, published, notified).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dcim.core.events import AlarmState, Severity
from dcim.rules.store import AlarmRecord

NS = 1_000_000_000
RANK = {None: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


@dataclass(slots=True)
class Timers:
    """Per-alarm timers that need not survive a restart (a restart restarts the waits, safely)."""

    clear_since: int | None = None
    change_to: Severity | None = None
    change_since: int | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a rule concluded about its subject at one evaluation."""

    severity: Severity | None  # None: the condition is clear
    value: float | None
    threshold: float | None
    message: str


@dataclass(frozen=True, slots=True)
class Timing:
    for_ns: int
    clear_after_ns: int


def step(record: AlarmRecord | None, timers: Timers, verdict: Verdict, timing: Timing, now: int,
         make: Callable[[], AlarmRecord]) -> tuple[AlarmRecord | None, bool]:
    """Advance one alarm. `make` gives a fresh PENDING record when the condition first appears.
    Returns (the record to keep, or None to forget it; whether this step is an event to announce)."""
    active = record is not None and record.state in (AlarmState.PENDING, AlarmState.FIRING)
    if verdict.severity is None:
        timers.change_to = timers.change_since = None
        if record is None or not active:
            timers.clear_since = None
            return None, False
        if record.state is AlarmState.PENDING:
            timers.clear_since = None
            return None, False
        if timers.clear_since is None:
            timers.clear_since = now
        if now - timers.clear_since >= timing.clear_after_ns:
            timers.clear_since = None
            record.state = AlarmState.RESOLVED
            record.resolved_ns = record.updated_ns = now
            record.message = f"resolved: {record.message.removeprefix('resolved: ')}"
            return record, True
        return record, False

    timers.clear_since = None
    if record is None or not active:
        record = make()
        record.since_ns = record.updated_ns = now
    assert record is not None
    record.value, record.threshold = verdict.value, verdict.threshold
    if record.state is AlarmState.PENDING:
        record.severity = verdict.severity
        record.message = verdict.message
        if now - record.since_ns >= timing.for_ns:
            record.state = AlarmState.FIRING
            record.fired_ns = record.updated_ns = now
            return record, True
        return record, False

    # Firing: severity moves up after the pending period, down after the clear delay.
    if verdict.severity == record.severity:
        timers.change_to = timers.change_since = None
        return record, False
    if timers.change_to != verdict.severity or timers.change_since is None:
        timers.change_to, timers.change_since = verdict.severity, now
    wait = timing.for_ns if RANK[verdict.severity] > RANK[record.severity] else timing.clear_after_ns
    if now - timers.change_since >= wait:
        timers.change_to = timers.change_since = None
        record.severity = verdict.severity
        record.message = verdict.message
        record.updated_ns = now
        return record, True
    return record, False
