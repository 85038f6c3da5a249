"""Routing and grouping: alarm events in, due notifications out. Pure state, no I/O, time passed in.

An event goes to the first route that matches it (and the next ones while a matched route says
`continue`); no routes configured means every hook. Within a route, alarms that share the `group_by` labels
form a group, and a group is notified as one:

    first alarm of a group          -> notification after group_wait (others of the burst join it)
    a later change (fires, resolves) -> at most one notification per group_interval
    still firing, not acknowledged   -> a reminder every repeat_interval
    resolved before it was notified  -> nothing at all (it never cried wolf)

Each alarm remembers the last state it was notified in; an event that repeats it (the rule engine
re-announcing its alarms after a restart) is not news, so a restart does not notify again.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from dcim.core.events import AlarmEvent, AlarmState, Severity
from dcim.core.metrics import REGISTRY
from dcim.rules.hooks.notification import Notification, event_from_dict, event_to_dict
from dcim.rules.notify.config import NotifyConfig, Route

_S = 1_000_000_000

UNROUTED = REGISTRY.counter("dcim_notify_unrouted_total", "Alarm events that no notification route matched")


@dataclass(slots=True)
class Entry:
    event: AlarmEvent
    # Last state (and severity) this alarm was notified in (None: not yet).
    notified: AlarmState | None = None
    notified_severity: Severity | None = None

    @property
    def news(self) -> bool:
        if self.notified is not self.event.state:
            return True
        # A warning that became critical is news; a critical that eased to warning is not worth a page.
        return (self.event.state is AlarmState.FIRING and self.event.severity is Severity.CRITICAL
                and self.notified_severity is not Severity.CRITICAL)

    def mark_notified(self) -> None:
        self.notified = self.event.state
        self.notified_severity = self.event.severity


@dataclass(slots=True)
class Group:
    key: str
    route: int
    labels: dict[str, str]
    created_ns: int
    alarms: dict[str, Entry] = field(default_factory=dict)
    last_sent_ns: int | None = None
    # When the pending news of this group is due (None: no news).
    due_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "route": self.route,
            "labels": self.labels,
            "created_ns": self.created_ns,
            "last_sent_ns": self.last_sent_ns,
            "due_ns": self.due_ns,
            "alarms": [
                {"event": event_to_dict(e.event), "notified": e.notified.value if e.notified else None,
                 "severity": e.notified_severity.value if e.notified_severity else None}
                for e in self.alarms.values()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Group:
        group = cls(
            data["key"],
            int(data["route"]),
            dict(data["labels"]),
            int(data["created_ns"]),
            last_sent_ns=data.get("last_sent_ns"),
            due_ns=data.get("due_ns"),
        )
        for item in data["alarms"]:
            event = event_from_dict(item["event"])
            notified = AlarmState(item["notified"]) if item["notified"] else None
            severity = Severity(item["severity"]) if item.get("severity") else None
            group.alarms[event.key] = Entry(event, notified, severity)
        return group


@dataclass(frozen=True, slots=True)
class Due:
    hooks: list[str]
    notification: Notification


def _label(event: AlarmEvent, name: str) -> str:
    if name == "rule":
        return event.rule
    if name == "severity":
        return event.severity.value
    if name == "subject":
        return event.subject
    return event.labels.get(name, "")


def matches(route: Route, event: AlarmEvent) -> bool:
    m = route.match
    if m.severity is not None and event.severity.value not in m.severity:
        return False
    for name in ("rule", "site", "room", "row", "rack", "device", "cdu"):
        patterns: list[str] | None = getattr(m, name)
        if patterns is not None:
            value = _label(event, name)
            if not any(fnmatch.fnmatchcase(value, p) for p in patterns):
                return False
    return True


class Router:
    def __init__(self, config: NotifyConfig) -> None:
        self.config = config
        self.groups: dict[str, Group] = {}
        # Groups changed since the last `take_changed` (to persist), and deleted ones.
        self.changed: set[str] = set()
        self.unrouted = 0

    # -- per-route settings -------------------------------------------------------------------
    def _route(self, index: int) -> Route | None:
        return self.config.routes[index] if index >= 0 else None

    def hooks_of(self, index: int) -> list[str]:
        route = self._route(index)
        return list(route.hooks) if route else list(self.config.hooks)

    def _setting(self, index: int, name: str) -> Any:
        route = self._route(index)
        value = getattr(route, name) if route else None
        return getattr(self.config, name) if value is None else value

    def _ns(self, index: int, name: str) -> int:
        return int(float(self._setting(index, name)) * _S)

    # -- events -------------------------------------------------------------------------------
    def routes_for(self, event: AlarmEvent) -> list[int]:
        if not self.config.routes:
            return [-1] if self.config.hooks else []
        chosen = []
        for i, route in enumerate(self.config.routes):
            if matches(route, event):
                chosen.append(i)
                if not route.continue_:
                    break
        return chosen

    def on_event(self, event: AlarmEvent, now_ns: int) -> None:
        if event.state is AlarmState.PENDING:
            return
        routes = self.routes_for(event)
        if not routes:
            self.unrouted += 1
            UNROUTED.inc()
        for index in routes:
            key, labels = self._group_of(index, event)
            group = self.groups.get(key)
            if group is None:
                if event.state is not AlarmState.FIRING:
                    continue
                group = self.groups[key] = Group(key, index, labels, now_ns)
            self._apply(group, event, now_ns)

    def _group_of(self, index: int, event: AlarmEvent) -> tuple[str, dict[str, str]]:
        group_by: list[str] = self._setting(index, "group_by")
        labels = {name: _label(event, name) for name in group_by}
        if not any(v for n, v in labels.items() if n != "site"):
            # Alarms without the grouping labels (a CDU's or a chiller's have no rack) are grouped by
            # their subject, not all together.
            labels["subject"] = event.subject
        return f"{index}|" + "|".join(f"{k}={v}" for k, v in labels.items()), labels

    def adopt(self, event: AlarmEvent, now_ns: int) -> None:
        """A firing alarm another process already notified (a cluster's previous leader): known here as
        notified in its state, so it is not sent again, and its later changes (its resolve) are news."""
        if event.state is not AlarmState.FIRING:
            return
        for index in self.routes_for(event):
            key, labels = self._group_of(index, event)
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = Group(key, index, labels, now_ns, last_sent_ns=now_ns)
            entry = group.alarms.get(event.key)
            if entry is None:
                entry = group.alarms[event.key] = Entry(event)
            else:
                entry.event = event
            entry.mark_notified()
            self.changed.add(group.key)

    def _apply(self, group: Group, event: AlarmEvent, now_ns: int) -> None:
        entry = group.alarms.get(event.key)
        if event.state is AlarmState.RESOLVED:
            if entry is None:
                return
            if entry.notified is None or not self.config.send_resolved:
                # Never told anyone it fired (or resolved notices are off): forget it quietly.
                del group.alarms[event.key]
                self._settle(group)
                return
        if entry is None:
            entry = group.alarms[event.key] = Entry(event)
        else:
            entry.event = event
        self.changed.add(group.key)
        if entry.news and group.due_ns is None:
            if group.last_sent_ns is None:
                group.due_ns = group.created_ns + self._ns(group.route, "group_wait")
            else:
                group.due_ns = max(now_ns, group.last_sent_ns + self._ns(group.route, "group_interval"))

    def _settle(self, group: Group) -> None:
        self.changed.add(group.key)
        if not any(e.news for e in group.alarms.values()):
            group.due_ns = None
        if not group.alarms:
            del self.groups[group.key]

    # -- time ---------------------------------------------------------------------------------
    def _repeat_at(self, group: Group) -> int | None:
        repeat = self._ns(group.route, "repeat_interval")
        if repeat <= 0 or group.last_sent_ns is None:
            return None
        if not any(
            e.event.state is AlarmState.FIRING and not e.event.acknowledged for e in group.alarms.values()
        ):
            return None
        return group.last_sent_ns + repeat

    def next_due_ns(self) -> int | None:
        times = []
        for group in self.groups.values():
            if group.due_ns is not None:
                times.append(group.due_ns)
            repeat = self._repeat_at(group)
            if repeat is not None:
                times.append(repeat)
        return min(times, default=None)

    def due(self, now_ns: int) -> list[Due]:
        out = []
        for group in list(self.groups.values()):
            if group.due_ns is not None and group.due_ns <= now_ns:
                out.append(self._flush(group, now_ns, repeat=False))
            else:
                repeat_at = self._repeat_at(group)
                if repeat_at is not None and repeat_at <= now_ns:
                    out.append(self._flush(group, now_ns, repeat=True))
        return out

    def _flush(self, group: Group, now_ns: int, *, repeat: bool) -> Due:
        entries = list(group.alarms.values())
        if repeat:
            entries = [e for e in entries if e.event.state is AlarmState.FIRING]
        changed = frozenset(e.event.key for e in entries if e.news)
        alarms = [e.event for e in entries]
        notification = Notification(
            group.key, dict(group.labels), alarms, changed, repeat=repeat, ts_ns=now_ns
        )
        for entry in list(group.alarms.values()):
            entry.mark_notified()
            if entry.event.state is AlarmState.RESOLVED:
                del group.alarms[entry.event.key]
        group.last_sent_ns = now_ns
        group.due_ns = None
        self._settle(group)
        return Due(self.hooks_of(group.route), notification)

    def forget(self) -> None:
        """Drop every group (saved as gone): what this router notified earlier is no longer its to follow
        up (a cluster node that leads again after another node paged meanwhile starts from etcd's record)."""
        self.changed.update(self.groups)
        self.groups = {}

    def take_changed(self) -> tuple[list[Group], list[str]]:
        """Groups to save and keys of groups to delete since the last call."""
        keys, self.changed = self.changed, set()
        live = [self.groups[k] for k in keys if k in self.groups]
        gone = [k for k in keys if k not in self.groups]
        return live, gone

    def restore(self, groups: list[Group]) -> None:
        self.groups = {g.key: g for g in groups}
