"""What a hook is given: one `Notification` for a group of alarms (one rack, by default).

Its JSON form is the generic webhook's body, and the input every other hook renders from:

    {"version": 1, "kind": "alarms", "status": "firing", "repeat": false,
     "title": "[CRITICAL] hall-1 A01: 2 firing", "text": "...",
     "group": {"key": "0|site=hall-1|rack=A01", "labels": {"site": "hall-1", "rack": "A01"}},
     "counts": {"firing": 2, "resolved": 0},
     "alarms": [{"key": ..., "rule": ..., "subject": ..., "state": "firing", "severity": "critical",
                 "ts_ns": ..., "time": "2026-01-01T00:00:00Z", "message": ..., "metric": ..., "value": ...,
                 "threshold": ..., "labels": {...}, "acknowledged": false, "changed": true}],
     "suppressed": 0}

`kind` is "summary" for the one message that stands for what a rate limit held back in an alarm storm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dcim.core.events import AlarmEvent, AlarmState, Severity


def event_to_dict(event: AlarmEvent) -> dict[str, Any]:
    return {
        "key": event.key,
        "rule": event.rule,
        "subject": event.subject,
        "state": event.state.value,
        "severity": event.severity.value,
        "ts_ns": event.ts_ns,
        "message": event.message,
        "metric": event.metric,
        "value": event.value,
        "threshold": event.threshold,
        "labels": dict(event.labels),
        "acknowledged": event.acknowledged,
        "repeat": event.repeat,
    }


def event_from_dict(data: dict[str, Any]) -> AlarmEvent:
    return AlarmEvent(
        key=data["key"],
        rule=data["rule"],
        subject=data["subject"],
        state=AlarmState(data["state"]),
        severity=Severity(data["severity"]),
        ts_ns=int(data["ts_ns"]),
        message=data["message"],
        metric=data.get("metric", ""),
        value=data.get("value"),
        threshold=data.get("threshold"),
        labels=dict(data.get("labels", {})),
        acknowledged=bool(data.get("acknowledged", False)),
        repeat=bool(data.get("repeat", False)),
    )


def iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Notification:
    group_key: str
    group_labels: dict[str, str]
    alarms: list[AlarmEvent]
    # Keys of the alarms whose state is news in this notification (the others are context).
    changed: frozenset[str] = frozenset()
    repeat: bool = False
    kind: str = "alarms"
    suppressed: int = 0
    ts_ns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def firing(self) -> list[AlarmEvent]:
        return [a for a in self.alarms if a.state is AlarmState.FIRING]

    @property
    def resolved(self) -> list[AlarmEvent]:
        return [a for a in self.alarms if a.state is AlarmState.RESOLVED]

    @property
    def status(self) -> str:
        return "firing" if self.firing else "resolved"

    @property
    def severity(self) -> Severity:
        if any(a.severity is Severity.CRITICAL for a in self.firing or self.alarms):
            return Severity.CRITICAL
        return Severity.WARNING

    @property
    def where(self) -> str:
        return " ".join(v for v in self.group_labels.values() if v) or "dcim"

    @property
    def title(self) -> str:
        if self.kind == "summary":
            return f"[STORM] {self.where}: {self.suppressed} more notifications held back by the rate limit"
        if self.status == "resolved":
            return f"[RESOLVED] {self.where}: {len(self.resolved)} resolved"
        parts = [f"{len(self.firing)} firing"]
        if self.resolved:
            parts.append(f"{len(self.resolved)} resolved")
        reminder = " (reminder)" if self.repeat else ""
        return f"[{self.severity.value.upper()}] {self.where}: {', '.join(parts)}{reminder}"

    def lines(self) -> list[str]:
        out = []
        for a in self.alarms:
            mark = "*" if a.key in self.changed else "-"
            value = "" if a.value is None else f" value={a.value:g}"
            limit = "" if a.threshold is None else f" threshold={a.threshold:g}"
            ack = " (acknowledged)" if a.acknowledged else ""
            out.append(
                f"{mark} {a.state.value.upper()} {a.severity.value} {a.subject} {a.rule}: "
                f"{a.message}{value}{limit} at {iso(a.ts_ns)}{ack}"
            )
        return out

    @property
    def text(self) -> str:
        head = self.title
        if self.kind == "summary":
            head += f"\n{self.extra.get('detail', '')}".rstrip()
        return "\n".join([head, *self.lines()])

    def to_dict(self) -> dict[str, Any]:
        alarms = []
        for a in self.alarms:
            item = event_to_dict(a)
            item.pop("repeat")
            item["time"] = iso(a.ts_ns)
            item["changed"] = a.key in self.changed
            alarms.append(item)
        return {
            "version": 1,
            "kind": self.kind,
            "status": self.status,
            "repeat": self.repeat,
            "title": self.title,
            "text": self.text,
            "group": {"key": self.group_key, "labels": dict(self.group_labels)},
            "counts": {"firing": len(self.firing), "resolved": len(self.resolved)},
            "alarms": alarms,
            "suppressed": self.suppressed,
            "ts_ns": self.ts_ns,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()
