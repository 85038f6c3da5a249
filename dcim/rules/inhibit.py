"""Why an alarm's notifications are held back right now: maintenance, shelved, or inhibited.

Inhibition follows the topology, so one fault makes one page:
- a device that is offline: its own threshold and no-data alarms, and those of the racks it serves, are
  inhibited; its communication alarm (rules.evaluate.COMM_RULE) speaks for all of them;
- a CDU loop fault (a firing alarm of a rule with `loop_fault: true`: leak, pump fault, low flow on the
  CDU): the `coolant` alarms of every rack the CDU serves are inhibited.

An alarm held back still fires and is stored and published (MQTT, database): only the notifier does not
hear of it until the reason is gone. An inhibited alarm names the alarm that suppresses it, so every view
shows which fault speaks for it: `suppressed` reads "inhibited by cdu-leak/cdu-1" or
"inhibited by device-offline/pdu-a1" (`split` gives the two parts).
Maintenance windows also lock out control actions (rules.control).
"""

from __future__ import annotations

from dcim.core.events import AlarmState
from dcim.core.topology import Topology
from dcim.rules.store import AlarmRecord, AlarmStore

MAINTENANCE = "maintenance"
SHELVED = "shelved"
INHIBITED = "inhibited"
BY = " by "


def split(suppressed: str) -> tuple[str, str]:
    """("inhibited", "cdu-leak/cdu-1") from "inhibited by cdu-leak/cdu-1"; (reason, "") otherwise."""
    reason, _, by = suppressed.partition(BY)
    return reason, by


class Silencer:
    def __init__(self, topology: Topology, store: AlarmStore, loop_fault_rules: set[str], comm_rule: str,
                 offline: set[str]) -> None:
        self.topology = topology
        self.store = store
        self.loop_fault_rules = loop_fault_rules
        self.comm_rule = comm_rule
        # The engine's live set of offline devices.
        self.offline = offline

    def related(self, subject: str, category: str = "") -> list[str]:
        """The subject, its rack, and for a rack the devices its alarm depends on: a maintenance window on
        any of them covers the alarm (work on a CDU silences its racks' coolant alarms, not their power)."""
        out = [subject]
        rack = dict(self.topology.tags(subject)).get("rack")
        if rack and rack != subject:
            out.append(rack)
        out += self.dependencies(subject, category)
        return out

    def dependencies(self, subject: str, category: str = "coolant") -> list[str]:
        """Devices whose data the subject's alarms are computed from: a rack's PDUs (every rack metric
        starts from its power), and its CDU for coolant alarms."""
        place = self.topology.racks.get(subject)
        if place is None:
            return []
        deps = [f.pdu for f in (place.rack.feeds.a, place.rack.feeds.b) if f is not None]
        if place.rack.cdu and category == "coolant":
            deps.append(place.rack.cdu)
        return deps

    def loop_fault(self, cdu: str) -> AlarmRecord | None:
        """The loop fault that fired first (the root cause), the same one on every tick and every run."""
        firing = [r for rule in self.loop_fault_rules
                  if (r := self.store.record(f"{rule}/{cdu}")) is not None and r.state is AlarmState.FIRING]
        return min(firing, key=lambda r: (r.fired_ns or r.since_ns, r.key), default=None)

    def reason(self, record: AlarmRecord, now_ns: int) -> str:
        category = record.labels.get("category", "")
        if self.store.in_maintenance(self.related(record.subject, category), now_ns) is not None:
            return MAINTENANCE
        if record.shelved_until_ns is not None and record.shelved_until_ns > now_ns:
            return SHELVED
        if record.rule == self.comm_rule:
            return ""
        deps = self.dependencies(record.subject, category)
        for device in (record.subject, *deps):
            if device in self.offline:
                return f"{INHIBITED}{BY}{self.comm_rule}/{device}"
        place = self.topology.racks.get(record.subject)
        if place is not None and place.rack.cdu and record.labels.get("category") == "coolant":
            fault = self.loop_fault(place.rack.cdu)
            if fault is not None:
                return f"{INHIBITED}{BY}{fault.key}"
        return ""
