"""The console's buttons: acknowledge, shelve, unshelve, maintenance.

Each one is the alarm store's own operation, the one `dcim alarms ack|shelve|unshelve|maintenance` and
the HTTP API call (rules.store: `acknowledge`, `shelve`, `unshelve`, `add_maintenance`, here their `_async`
twins on the daemon's loop), so the store checks the same things (the alarm exists and fires, a shelve
ends in the future, a window ends after it starts), the rules service publishes the change the same way
(MQTT, the `alarm` measurement, the notifier for acknowledgements), and the daemon's next flush writes it.

Then the action is appended to the daemon's audit trail (dcim.core.audit, `dcim audit`), chained like a
write: origin `console:<user>`, device the alarm's subject, point `alarm_ack` / `alarm_shelve` /
`alarm_unshelve` / `maintenance`, value the alarm key (or the window's subject), outcome what happened.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from dcim.core.audit import AuditLog
from dcim.core.samples import now_ns

NS = 1_000_000_000
MAX_SHELVE_MINUTES = 7 * 24 * 60  # as the HTTP API: a shelved alarm is a forgotten alarm
MAX_WINDOW_MINUTES = 31 * 24 * 60

log = structlog.get_logger(__name__)


class StoreLike(Protocol):
    async def acknowledge_async(self, key: str, user: str, comment: str = "") -> Any: ...
    async def shelve_async(self, key: str, until_ns: int, user: str) -> Any: ...
    async def unshelve_async(self, key: str) -> Any: ...
    async def add_maintenance_async(self, subject: str, start_ns: int, end_ns: int, reason: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Done:
    message: str
    audit_seq: int  # 0: not recorded (audit_error says why)
    audit_error: str = ""


class Actions:
    def __init__(self, store: StoreLike, audit: AuditLog) -> None:
        self.store = store
        self.audit = audit

    async def acknowledge(self, key: str, user: str, comment: str) -> Done:
        record = await self.store.acknowledge_async(key, user, comment)
        return await self._audit(f"acknowledged {key}", user, record.subject, "alarm_ack", key, "acknowledged",
                                 comment)

    async def shelve(self, key: str, minutes: float, user: str) -> Done:
        if not 0 < minutes <= MAX_SHELVE_MINUTES:
            raise ValueError(f"shelve for more than 0 and at most {MAX_SHELVE_MINUTES} minutes")
        until = now_ns() + int(minutes * 60 * NS)
        record = await self.store.shelve_async(key, until, user)
        return await self._audit(f"shelved {key} for {minutes:g} min", user, record.subject, "alarm_shelve", key,
                                 "shelved", f"{minutes:g} min")

    async def unshelve(self, key: str, user: str) -> Done:
        record = await self.store.unshelve_async(key)
        return await self._audit(f"unshelved {key}", user, record.subject, "alarm_unshelve", key, "unshelved", "")

    async def maintenance(self, subject: str, minutes: float, reason: str, user: str) -> Done:
        if not 0 < minutes <= MAX_WINDOW_MINUTES:
            raise ValueError(f"a maintenance window lasts more than 0 and at most {MAX_WINDOW_MINUTES} minutes")
        start = now_ns()
        window = await self.store.add_maintenance_async(subject, start, start + int(minutes * 60 * NS), reason)
        return await self._audit(f"maintenance window {window.id} on {subject} for {minutes:g} min", user, subject,
                                 "maintenance", subject, "window opened",
                                 f"{minutes:g} min: {reason}" if reason else f"{minutes:g} min")

    async def _audit(self, message: str, user: str, device: str, point: str, value: str, outcome: str,
                     reason: str) -> Done:
        """Record an action the store has taken: a trail that cannot be written (a full disk) does not undo
        it, and the operator is told the record is missing."""
        fields = {"ts_ns": now_ns(), "origin": f"console:{user}", "device": device, "point": point,
                  "value": value, "old": None, "new": None, "outcome": outcome, "reason": reason, "raw": "",
                  "address": "", "stops": False}
        try:
            # Blocking (flock, fsync): off the event loop, as the write guard does.
            record = await asyncio.to_thread(self.audit.append, fields)
        except OSError as err:
            log.error("console action not in the audit trail", action=point, subject=device, user=user,
                      error=str(err))
            return Done(message, 0, str(err))
        return Done(message, int(record["seq"]))
