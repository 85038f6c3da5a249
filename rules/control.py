"""Control actions: when armed, an alarm can act on the equipment, inside a safety envelope.

    rules:
      control:
        armed: true                      # off by default: nothing is ever written unless this is set
        max_actions: 10                  # commands per `period`, all actions together
        period: 1h
        min_interval: 10s                # per device and point
        envelope:                        # the only points an action may write, and their ranges
          - {kind: pdu, point: "outlet_command:{outlet}", values: ["off"]}
          - {kind: cdu, point: flow_setpoint_lpm, min: 100, max: 900}
        actions:
          - name: leak-power-off
            rule: cdu-leak               # when an alarm of this rule fires (critical) ...
            delay: 30s                   # ... and is still firing 30 s later ...
            target: rack_pdus            # ... on the PDUs of the racks the leaking CDU serves:
            writes: [{point: "outlet_command:{outlet}", value: "off", outlets: all}]

Every command is checked before it goes out: the action is armed; the point is in the envelope for the
device's kind and the value within its range; no maintenance window covers the device or its rack; the
per-point interval and the global budget allow it. Executed or refused, it is logged and recorded in the
alarm store's `actions` table. The write itself goes through `Controller.write` with the action as its
origin: the daemon hands it to the one write path (rules.writes.WriteGuard), which checks the profile, the
device's own range, armed, maintenance and rate again, verifies by read-back and records it in the audit
trail. What the guard refuses is recorded here as refused, a write it could not verify as unverified.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from dcim.core.events import AlarmState
from dcim.core.metrics import REGISTRY
from dcim.core.samples import Value
from dcim.core.topology import Topology
from rules.alarms import NS, RANK
from rules.clock import Clock
from rules.config import Action, ControlConfig
from rules.metrics import Readings
from rules.store import AlarmRecord, AlarmStore
from rules.writes import WriteRefused, WriteResult

log = structlog.get_logger(__name__)

COMMANDS = REGISTRY.counter("dcim_control_commands_total", "Control commands by outcome", ("outcome",))


class Controller(Protocol):
    async def write(self, device: str, point: str, value: Value, *, origin: str = "rule") -> object:
        """Raises WriteRefused (rules.writes) when the guard refuses; may return a WriteResult."""


@dataclass(frozen=True, slots=True)
class Command:
    action: str
    alarm: str
    device: str
    point: str
    value: Value


@dataclass(slots=True)
class _Scheduled:
    action: Action
    alarm: str
    due_ns: int


class ControlActions:
    def __init__(self, config: ControlConfig, topology: Topology, store: AlarmStore, readings: Readings,
                 clock: Clock, controller: Controller | None) -> None:
        self.config = config
        self.topology = topology
        self.store = store
        self.readings = readings
        self.clock = clock
        self.controller = controller
        self._scheduled: list[_Scheduled] = []
        self._sent: deque[int] = deque()
        self._last: dict[tuple[str, str], int] = {}
        # Told of commands refused here, before the write path saw them, so the audit trail has them too:
        # (device, point, value, origin, reason). The daemon sets it to WriteGuard.note_refusal.
        self.on_refused: Callable[[str, str, Value, str, str], None] | None = None

    # ---- scheduling --------------------------------------------------------------------------------------

    def on_alarm(self, record: AlarmRecord) -> None:
        if record.state is AlarmState.RESOLVED:
            self._scheduled = [s for s in self._scheduled if s.alarm != record.key]
            return
        for action in self.config.actions:
            if action.rule != record.rule or RANK[record.severity] < RANK[action.severity]:
                continue
            if any(s.alarm == record.key and s.action.name == action.name for s in self._scheduled):
                continue
            self._scheduled.append(_Scheduled(action, record.key, record.updated_ns + round(action.delay * NS)))

    def due(self) -> list[Command]:
        """Commands whose delay is over and whose alarm still fires, after the envelope's checks."""
        now = self.clock.now_ns()
        ready = [s for s in self._scheduled if s.due_ns <= now]
        self._scheduled = [s for s in self._scheduled if s.due_ns > now]
        out: list[Command] = []
        for item in ready:
            record = self.store.record(item.alarm)
            if record is None or record.state is not AlarmState.FIRING:
                continue
            for command in self._commands(item.action, record):
                refusal = self.check(command, now)
                if refusal:
                    self._log(command, "refused", refusal)
                    continue
                self._sent.append(now)
                self._last[(command.device, command.point)] = now
                out.append(command)
        return out

    async def run_due(self) -> None:
        """Send what is due, one command after another (a slow device delays only its own actions)."""
        for command in self.due():
            await self.send(command)

    async def send(self, command: Command) -> None:
        if self.controller is None:
            self._log(command, "refused", "no controller")
            return
        try:
            result = await self.controller.write(command.device, command.point, command.value,
                                                 origin=f"rule:{command.action}")
        except asyncio.CancelledError:
            raise
        except WriteRefused as err:
            self._log(command, "refused", str(err), audited=True)
            return
        except Exception as err:
            self._log(command, "failed", f"{type(err).__name__}: {err}")
            return
        if isinstance(result, WriteResult) and result.outcome == "unverified":
            self._log(command, "unverified", result.reason)
            return
        self._log(command, "executed", "")

    # ---- targets and the envelope ------------------------------------------------------------------------

    def _targets(self, action: Action, record: AlarmRecord) -> list[str]:
        subject = record.subject
        racks = [subject] if subject in self.topology.racks else self.topology.racks_served_by(subject)
        rack_tag = dict(self.topology.tags(subject)).get("rack")
        if not racks and rack_tag:
            racks = [rack_tag]
        if action.target == "subject":
            return [subject]
        if action.target == "cdu":
            if self.topology.kinds.get(subject) == "cdu":
                return [subject]
            cdus = {self.topology.racks[r].rack.cdu for r in racks}
            return sorted(c for c in cdus if c)
        pdus: list[str] = []
        for rack in racks:
            feeds = self.topology.racks[rack].rack.feeds
            pdus += [f.pdu for f in (feeds.a, feeds.b) if f is not None]
        return pdus

    def _commands(self, action: Action, record: AlarmRecord) -> list[Command]:
        out: list[Command] = []
        now = self.clock.now_ns()
        for device in self._targets(action, record):
            for write in action.writes:
                if write.increase_by is not None:
                    current = self.readings.number(device, write.point, now)
                    if current is None:
                        self._log(Command(action.name, record.key, device, write.point, ""), "refused",
                                  "no current value to increase")
                        continue
                    value: Value = current + write.increase_by
                else:
                    assert write.value is not None
                    value = write.value
                if write.outlets is None:
                    out.append(Command(action.name, record.key, device, write.point, value))
                    continue
                outlets = range(1, action.outlets + 1) if write.outlets == "all" else write.outlets
                out += [Command(action.name, record.key, device, write.point.format(outlet=n), value)
                        for n in outlets]
        return out

    def check(self, command: Command, now: int) -> str:
        """Why the command must not go out ("" when it may)."""
        if not self.config.armed:
            return "control is not armed"
        kind = self.topology.kinds.get(command.device)
        generic = command.point
        for envelope in self.config.envelope:
            if envelope.kind != kind:
                continue
            pattern = envelope.point
            if pattern == command.point or ("{outlet}" in pattern and _matches(pattern, command.point)):
                generic = pattern
                break
        else:
            return f"{command.point} on a {kind} is outside the envelope"
        value = command.value
        if envelope.values is not None and value not in envelope.values:
            return f"{value!r} is not an allowed value for {generic}"
        if envelope.min is not None or envelope.max is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"{value!r} is not a number"
            if envelope.min is not None and value < envelope.min:
                return f"{value} is below the envelope's {envelope.min}"
            if envelope.max is not None and value > envelope.max:
                return f"{value} is above the envelope's {envelope.max}"
        subjects = [command.device]
        rack = dict(self.topology.tags(command.device)).get("rack")
        if rack:
            subjects.append(rack)
        window = self.store.in_maintenance(subjects, now)
        if window is not None:
            return f"maintenance window on {window.subject} ({window.reason})"
        last = self._last.get((command.device, command.point))
        if last is not None and now - last < self.config.min_interval * NS:
            return f"{command.device} {command.point} was written {(now - last) / NS:.0f} s ago"
        horizon = now - round(self.config.period * NS)
        while self._sent and self._sent[0] <= horizon:
            self._sent.popleft()
        if len(self._sent) >= self.config.max_actions:
            return f"action budget spent ({self.config.max_actions} per {self.config.period:g} s)"
        return ""

    def _log(self, command: Command, outcome: str, detail: str, *, audited: bool = False) -> None:
        if outcome == "refused" and not audited and self.on_refused is not None:
            self.on_refused(command.device, command.point, command.value, f"rule:{command.action}", detail)
        COMMANDS.inc(outcome=outcome)
        (log.warning if outcome != "executed" else log.info)(
            "control action", action=command.action, alarm=command.alarm, device=command.device,
            point=command.point, value=command.value, outcome=outcome, detail=detail)
        self.store.log_action(self.clock.now_ns(), command.action, command.alarm, command.device, command.point,
                              command.value, outcome, detail)


def _matches(pattern: str, point: str) -> bool:
    head, _, tail = pattern.partition("{outlet}")
    middle = point[len(head): len(point) - len(tail)] if len(point) > len(head) + len(tail) else ""
    return point.startswith(head) and point.endswith(tail) and middle.isdigit()
