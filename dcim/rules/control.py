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

An action with `lease: <duration>` leases what it moves (rules/leases.py): the prior value is written back
(origin `lease:<action>`) when the alarm clears or the lease runs out unrenewed. The tiered leak response
(`control.leak`, rules/leak.py) is driven from here too: `jobs()` gives the service, every tick, the lease
restores and leak stages that are due.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from dcim.core.events import AlarmState
from dcim.core.metrics import REGISTRY
from dcim.core.samples import Value
from dcim.core.topology import Topology
from dcim.rules.alarms import NS, RANK
from dcim.rules.clock import Clock
from dcim.rules.config import Action, ControlConfig
from dcim.rules.leak import LeakResponder
from dcim.rules.leases import NS as LEASE_NS
from dcim.rules.leases import Lease, LeaseBook, renew, retry_after
from dcim.rules.metrics import Readings
from dcim.rules.store import AlarmRecord, AlarmStore
from dcim.rules.writes import WriteRefused, WriteResult

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
    # The action's lease length (seconds), when it leases what it writes.
    lease: float | None = None


@dataclass(slots=True)
class _Scheduled:
    action: Action
    alarm: str
    due_ns: int


class ControlActions:
    def __init__(self, config: ControlConfig, topology: Topology, store: AlarmStore, readings: Readings,
                 clock: Clock, controller: Controller | None, *, state_dir: Path | None = None,
                 previous: ControlActions | None = None) -> None:
        """`previous`: the actions this replaces at a reload, whose work goes on here (`_carry_on`)."""
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
        self._restoring: set[tuple[str, str]] = set()
        self.leases: LeaseBook | None
        self.leak: LeakResponder
        if previous is not None:
            self.leases = previous.leases
            self.leak = previous.leak
            self._carry_on(previous)
            return
        # Setpoint leases and the leak response keep their state in state_dir (none: in memory only, tests).
        self.leases = LeaseBook(state_dir / "leases.json") if state_dir is not None else None
        self.leak = LeakResponder(config.leak, self, state_dir)
        if self.leases is not None:
            self._expired_at_start(self.leases)

    def _carry_on(self, previous: ControlActions) -> None:
        """A reload: what the replaced actions were doing goes on under the new configuration. An action still
        waiting for its delay runs when it is due (moved by the change of its delay, if any), unless the new
        file removed it, gave it another rule or a severity its alarm does not reach, or its alarm's subject
        is no longer here (removed, or in a cluster another node's shard now); the envelope's budget
        and intervals count what was sent before; the leases are the same book (jobs restoring them may
        still run) and the leak response the same responder (an incident in progress, the stages it has not
        yet written to the audit trail), both reconfigured; refusals are still told to the audit trail."""
        actions = {action.name: action for action in self.config.actions}
        for item in previous._scheduled:
            action = actions.get(item.action.name)
            record = self.store.record(item.alarm)
            if action is None or action.rule != item.action.rule or record is None \
                    or RANK[record.severity] < RANK[action.severity] \
                    or (record.subject not in self.topology.kinds and record.subject not in self.topology.racks):
                continue
            due = item.due_ns + round((action.delay - item.action.delay) * NS)
            self._scheduled.append(_Scheduled(action, item.alarm, due))
        self._sent = previous._sent
        self._last = previous._last
        self.on_refused = previous.on_refused
        self._restoring = previous._restoring
        self.leak.reconfigure(self.config.leak, self)

    # ---- scheduling --------------------------------------------------------------------------------------

    def on_alarm(self, record: AlarmRecord) -> None:
        self.leak.on_alarm(record)
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
            out += [command for command in self._commands(item.action, record) if self.admit(command, now)]
        return out

    def admit(self, command: Command, now: int) -> bool:
        """The envelope's checks; an admitted command counts against the budget and the interval."""
        refusal = self.check(command, now)
        if refusal:
            self._log(command, "refused", refusal)
            return False
        self._sent.append(now)
        self._last[(command.device, command.point)] = now
        return True

    def close(self) -> None:
        """At shutdown, after the jobs were cancelled: what they had not yet recorded is recorded now."""
        self.leak.flush_now()

    def jobs(self) -> list[Coroutine[Any, Any, None]]:
        """Work due this tick besides the actions: lease restores, leak response stages."""
        now = self.clock.now_ns()
        return self._lease_jobs(now) + self.leak.jobs(now)

    async def run_due(self) -> None:
        """Send what is due, one command after another (a slow device delays only its own actions)."""
        for command in self.due():
            await self.send(command)

    async def send(self, command: Command) -> None:
        await self.send_outcome(command)

    async def send_outcome(self, command: Command) -> str:
        """Send one admitted command; its outcome: executed, unverified, refused or failed."""
        if self.controller is None:
            self._log(command, "refused", "no controller")
            return "refused"
        # Leased: the lease is on record before the write goes out (a crash right after the write must
        # still find it at the next start-up).
        lease = self._lease_before(command) if command.lease else None
        try:
            result = await self.controller.write(command.device, command.point, command.value,
                                                 origin=f"rule:{command.action}")
        except asyncio.CancelledError:
            raise
        except WriteRefused as err:
            self._lease_after(lease, None, sent=False)
            self._log(command, "refused", str(err), audited=True)
            return "refused"
        except Exception as err:
            self._lease_after(lease, None, sent=True)
            self._log(command, "failed", f"{type(err).__name__}: {err}")
            return "failed"
        self._lease_after(lease, result if isinstance(result, WriteResult) else None, sent=True)
        if isinstance(result, WriteResult) and result.outcome == "unverified":
            self._log(command, "unverified", result.reason)
            return "unverified"
        self._log(command, "executed", "")
        return "executed"

    # ---- setpoint leases ---------------------------------------------------------------------------------

    def _expired_at_start(self, book: LeaseBook) -> None:
        """Leases that ran out while no daemon renewed them end now, whatever the alarm store says."""
        now = self.clock.now_ns()
        changed = False
        for lease in book.all():
            if not lease.ending and lease.expires_ns <= now:
                lease.ending = "lease expired while the daemon was not running"
                changed = True
        if changed:
            book.save()

    def _lease_before(self, command: Command) -> tuple[Lease, bool] | None:
        """Record (or join) the lease on the command's point; (lease, created here)."""
        if self.leases is None or command.lease is None:
            return None
        now = self.clock.now_ns()
        held = self.leases.get(command.device, command.point)
        if held is not None:
            # A point already leased keeps the value it had before the first action moved it.
            if command.alarm not in held.alarms:
                held.alarms.append(command.alarm)
            held.value, held.ending, held.attempts, held.retry_ns = command.value, "", 0, 0
            held.duration = max(held.duration, command.lease)
            held.expires_ns = max(held.expires_ns, now + round(command.lease * LEASE_NS))
            self.leases.save()
            return held, False
        # The prior value as the rule engine last read it; the write path's own read replaces it below.
        reading = self.readings.reading(command.device, command.point, now)
        lease = Lease(command.device, command.point, reading.value if reading is not None else None,
                      command.value, command.action, command.lease, now + round(command.lease * LEASE_NS),
                      [command.alarm])
        self.leases.put(lease)
        return lease, True

    def _lease_after(self, taken: tuple[Lease, bool] | None, result: WriteResult | None, *, sent: bool) -> None:
        if taken is None or self.leases is None:
            return
        lease, created = taken
        if not created:
            return
        if not sent:
            self.leases.drop(lease)
            return
        if result is not None and result.old is not None:
            lease.prior = result.old
            self.leases.save()
        elif lease.prior is None:
            log.error("setpoint lease dropped: the prior value is unknown", device=lease.device,
                      point=lease.point, action=lease.action)
            self.leases.drop(lease)

    def _firing(self, alarm: str) -> bool:
        record = self.store.record(alarm)
        return record is not None and record.state is AlarmState.FIRING

    def _lease_jobs(self, now: int) -> list[Coroutine[Any, Any, None]]:
        if self.leases is None:
            return []
        jobs: list[Coroutine[Any, Any, None]] = []
        for lease in self.leases.all():
            if lease.key in self._restoring:
                continue
            if lease.prior is None:
                # Recorded before a write whose prior value never became known (a crash in between).
                log.error("setpoint lease without a prior value dropped", device=lease.device, point=lease.point)
                self.leases.drop(lease)
                continue
            if not lease.ending:
                if any(self._firing(alarm) for alarm in lease.alarms) and lease.expires_ns > now:
                    if renew(lease, now):
                        self.leases.save()
                    continue
                lease.ending = "lease expired unrenewed" if lease.expires_ns <= now else "condition cleared"
                self.leases.save()
            if lease.retry_ns > now:
                continue
            self._restoring.add(lease.key)
            jobs.append(self._restore(lease))
        return jobs

    async def _restore(self, lease: Lease) -> None:
        """Write the prior value back through the one write path; retried later if that does not work."""
        assert self.leases is not None and lease.prior is not None
        command = Command(lease.action, ",".join(lease.alarms), lease.device, lease.point, lease.prior)
        try:
            if self.controller is None:
                raise WriteRefused("no controller")
            result = await self.controller.write(lease.device, lease.point, lease.prior,
                                                 origin=f"lease:{lease.action}")
        except asyncio.CancelledError:
            raise
        except Exception as err:
            lease.attempts += 1
            wait = retry_after(lease.attempts)
            lease.retry_ns = self.clock.now_ns() + round(wait * NS)
            self.leases.save()
            outcome = "refused" if isinstance(err, WriteRefused) else "failed"
            # The write path recorded the attempt in the audit trail already (audited=True).
            self._log(command, outcome, f"lease restore ({lease.ending}) {outcome}: {err}; again in {wait:g} s",
                      audited=True)
            return
        finally:
            self._restoring.discard(lease.key)
        self.leases.drop(lease)
        unverified = isinstance(result, WriteResult) and result.outcome == "unverified"
        self._log(command, "unverified" if unverified else "restored",
                  f"lease ended ({lease.ending}): back to {lease.prior!r}"
                  + (f"; {result.reason}" if isinstance(result, WriteResult) and unverified else ""))

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

    def commands(self, action: Action, record: AlarmRecord) -> list[Command]:
        """The commands an action means for an alarm (before the envelope's checks)."""
        return self._commands(action, record)

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
                    out.append(Command(action.name, record.key, device, write.point, value, action.lease))
                    continue
                outlets = range(1, action.outlets + 1) if write.outlets == "all" else write.outlets
                out += [Command(action.name, record.key, device, write.point.format(outlet=n), value, action.lease)
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
        (log.warning if outcome not in ("executed", "restored") else log.info)(
            "control action", action=command.action, alarm=command.alarm, device=command.device,
            point=command.point, value=command.value, outcome=outcome, detail=detail)
        self.store.log_action(self.clock.now_ns(), command.action, command.alarm, command.device, command.point,
                              command.value, outcome, detail)


def _matches(pattern: str, point: str) -> bool:
    head, _, tail = pattern.partition("{outlet}")
    middle = point[len(head): len(point) - len(tail)] if len(point) > len(head) + len(tail) else ""
    return point.startswith(head) and point.endswith(tail) and middle.isdigit()
