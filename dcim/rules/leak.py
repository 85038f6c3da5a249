"""The tiered leak response: detected -> confirmed -> isolate, each stage recorded with its plan.

    rules:
      control:
        leak:
          mode: dry-run          # off | dry-run (the default) | armed
          rule: cdu-leak         # detected: an alarm of this rule fires on a CDU
          zones: 2               # confirmed: this many leak zones wet at once ...
          persist: 30s           # ... or the alarm still firing this long after it fired
          delay: 60s             # isolate: this long after confirmation, if the alarm still fires
          target: rack_pdus      # the PDUs of the racks the CDU serves (or `cdu`: a valve point of the CDU)
          writes: [{point: "outlet_command:{outlet}", value: "off", outlets: all}]

Stages: `detected`, `confirmed`, then `planned` (dry run: the isolation is recorded as a plan and nothing
is written) or `isolated` / `isolation incomplete` (armed: the writes went through the envelope and the
one write path, origin `rule:leak-isolate`); `cleared` when the alarm resolves before isolation. Every
stage is recorded in the audit trail (origin `leak:<mode>`, point `leak_response`, outcome the stage,
reason the plan) and in `{state_dir}/leak-response.json`, which
`dcim alarms` shows next to the alarm. Armed isolation also needs `rules.control.armed` and the envelope
to allow the writes: the leak response is one more control action, not a way around the envelope.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from dcim.core.audit import AuditLog
from dcim.core.events import AlarmState
from dcim.core.samples import Value
from dcim.rules.clock import Clock
from dcim.rules.config import Action, LeakResponse
from dcim.rules.leases import write_json_atomically
from dcim.rules.metrics import Readings
from dcim.rules.store import AlarmRecord, AlarmStore

log = structlog.get_logger(__name__)

NS = 1_000_000_000
ACTION = "leak-isolate"
STATE_FILE = "leak-response.json"
# Finished incidents stay in the state file (and in `dcim alarms`) this long.
KEEP_NS = 7 * 86_400 * NS


class Command(Protocol):
    @property
    def device(self) -> str: ...

    @property
    def point(self) -> str: ...

    @property
    def value(self) -> Value: ...


class Control(Protocol):
    """What the leak response uses of rules.control.ControlActions (which owns it): the isolation is one
    more control action, held to the same envelope and budget."""

    clock: Clock
    store: AlarmStore
    readings: Readings

    def commands(self, action: Action, record: AlarmRecord) -> list[Any]: ...

    def admit(self, command: Any, now: int) -> bool: ...

    async def send_outcome(self, command: Any) -> str: ...


@dataclass(slots=True)
class Incident:
    alarm: str
    cdu: str
    mode: str
    stage: str
    detected_ns: int
    stage_ns: int
    plan: str = ""
    isolate_ns: int = 0
    done: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_incidents(state_dir: Path) -> dict[str, dict[str, Any]]:
    """The leak response's incidents by alarm key, as `dcim alarms` shows them."""
    try:
        raw = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(item["alarm"]): item for item in raw if isinstance(item, dict) and "alarm" in item}


def describe(incident: dict[str, Any]) -> str:
    return f"leak response: {incident.get('stage')} ({incident.get('mode')}); {incident.get('plan')}"


class LeakResponder:
    def __init__(self, config: LeakResponse, control: Control, state_dir: Path | None) -> None:
        self.reconfigure(config, control)
        self.state_path = state_dir / STATE_FILE if state_dir is not None else None
        self.audit = AuditLog(state_dir / "audit.log") if state_dir is not None else None
        self.incidents: dict[str, Incident] = {}
        self._audit_queue: list[dict[str, Any]] = []
        self._audit_lock = asyncio.Lock()
        if self.state_path is not None:
            for key, item in load_incidents(self.state_path.parent).items():
                try:
                    self.incidents[key] = Incident(**item)
                except TypeError:
                    log.error("leak response state unreadable", item=item)
            for incident in self.incidents.values():
                if incident.stage == "isolating" and not incident.done:
                    # Stopped mid-isolation: what was sent is in the audit trail; do not send it twice.
                    incident.done = True
                    self._stage(incident, "isolation incomplete", "the daemon stopped during isolation: "
                                "see the audit trail for what was written", control.clock.now_ns())

    def reconfigure(self, config: LeakResponse, control: Control) -> None:
        """The configuration and control actions (at a reload, the new ones: incidents in progress go on in
        the mode they started in, and the stages not yet written to the audit trail are still written)."""
        self.config = config
        self.control = control
        self.action = Action(name=ACTION, rule=config.rule, target=config.target, writes=config.writes,
                             outlets=config.outlets)

    # ---- stages ------------------------------------------------------------------------------------------

    def on_alarm(self, record: AlarmRecord) -> None:
        if self.config.mode == "off" or record.rule != self.config.rule:
            return
        open_ = self.incidents.get(record.key)
        if record.state is not AlarmState.FIRING or (open_ is not None and not open_.done):
            return
        now = self.control.clock.now_ns()
        incident = Incident(record.key, record.subject, self.config.mode, "detected", now, now)
        incident.plan = self._plan(record)
        self.incidents[record.key] = incident
        self._stage(incident, "detected", f"{record.message or 'leak'}; confirm: {self.config.zones} zones wet "
                                          f"or {self.config.persist:g} s; then {incident.plan}", now)

    def jobs(self, now: int) -> list[Coroutine[Any, Any, None]]:
        """Move incidents on; the coroutines record the stages (audit trail) and isolate."""
        jobs: list[Coroutine[Any, Any, None]] = []
        for incident in list(self.incidents.values()):
            if incident.done:
                if now - incident.stage_ns > KEEP_NS:
                    del self.incidents[incident.alarm]
                continue
            record = self.control.store.record(incident.alarm)
            if record is None or record.state is not AlarmState.FIRING:
                if incident.stage != "isolating":
                    incident.done = True
                    self._stage(incident, "cleared", "the leak alarm resolved", now)
                continue
            if incident.stage == "detected":
                wet = self._wet(incident.cdu, now)
                if wet >= self.config.zones:
                    self._confirm(incident, f"{wet} leak zones wet", now)
                elif now - incident.detected_ns >= round(self.config.persist * NS):
                    self._confirm(incident, f"the leak persisted {self.config.persist:g} s", now)
            if incident.stage == "confirmed" and now >= incident.isolate_ns:
                if incident.mode != "armed":
                    incident.done = True
                    self._stage(incident, "planned", f"dry run, nothing written: {incident.plan}", now)
                else:
                    self._stage(incident, "isolating", incident.plan, now)
                    jobs.append(self._isolate(incident, record))
        if self._audit_queue:
            jobs.append(self._flush_audit())
        return jobs

    def _confirm(self, incident: Incident, why: str, now: int) -> None:
        incident.isolate_ns = now + round(self.config.delay * NS)
        self._stage(incident, "confirmed", f"{why}; isolate in {self.config.delay:g} s: {incident.plan}", now)

    def _wet(self, cdu: str, now: int) -> int:
        wet = 0
        for point in self.config.zone_points:
            reading = self.control.readings.reading(cdu, point, now)
            if reading is not None and reading.value is True:
                wet += 1
        return wet

    def _plan(self, record: AlarmRecord) -> str:
        commands = self.control.commands(self.action, record)
        if not commands:
            return "nothing to isolate (no target device)"
        listed = ", ".join(f"{c.device} {c.point} <- {c.value}" for c in commands)
        return f"isolate ({'armed' if self.config.mode == 'armed' else 'dry run'}): {listed}"

    async def _isolate(self, incident: Incident, record: AlarmRecord) -> None:
        now = self.control.clock.now_ns()
        commands: list[Command] = self.control.commands(self.action, record)
        outcomes = [await self.control.send_outcome(c) if self.control.admit(c, now) else "refused"
                    for c in commands]
        done = sum(1 for o in outcomes if o == "executed")
        incident.done = True
        if commands and done == len(commands):
            self._stage(incident, "isolated", f"{done} of {len(commands)} writes verified: {incident.plan}",
                        self.control.clock.now_ns())
        else:
            summary = ", ".join(f"{c.device} {c.point}: {o}" for c, o in zip(commands, outcomes, strict=True))
            self._stage(incident, "isolation incomplete", f"{done} of {len(commands)} writes done: {summary}",
                        self.control.clock.now_ns())
        await self._flush_audit()

    # ---- records -----------------------------------------------------------------------------------------

    def _stage(self, incident: Incident, stage: str, detail: str, now: int) -> None:
        incident.stage, incident.stage_ns = stage, now
        incident.history.append({"stage": stage, "ts_ns": now, "detail": detail})
        (log.warning if stage not in ("cleared",) else log.info)(
            "leak response", alarm=incident.alarm, cdu=incident.cdu, mode=incident.mode, stage=stage,
            detail=detail)
        self._audit_queue.append({
            "ts_ns": now, "origin": f"leak:{incident.mode}", "device": incident.cdu, "point": "leak_response",
            "value": stage, "old": None, "new": None, "outcome": stage, "reason": detail, "raw": "",
            "address": "", "stops": False, "alarm": incident.alarm,
        })
        if self.state_path is not None:
            write_json_atomically(self.state_path, [i.to_dict() for i in self.incidents.values()])

    def flush_now(self) -> None:
        """Blocking: the stages not yet in the audit trail (their flush job was cancelled at shutdown)."""
        queue, self._audit_queue = self._audit_queue, []
        if self.audit is not None:
            for fields in queue:
                self.audit.append(fields)

    async def _flush_audit(self) -> None:
        async with self._audit_lock:  # stages reach the audit trail in the order they happened
            queue, self._audit_queue = self._audit_queue, []
            if self.audit is None or not queue:
                return
            audit = self.audit
            written = asyncio.get_running_loop().run_in_executor(
                None, lambda: [audit.append(fields) for fields in queue])
            try:
                await asyncio.shield(written)
            except asyncio.CancelledError:
                # The appends already run on their thread: let them land before the shutdown goes on, so a
                # daemon that stopped has every stage it recorded in the audit trail, in order.
                await asyncio.wait([written])
                raise
