"""Routing and grouping as pure state: events in, due notifications out, time passed in."""

from __future__ import annotations

import json
from dataclasses import replace

from dcim.core.events import AlarmState, Severity
from dcim.rules.notify.config import NotifyConfig
from dcim.rules.notify.router import Group, Router
from tests.notify.conftest import event

S = 1_000_000_000
T0 = 1_700_000_000 * S


def config(**extra: object) -> NotifyConfig:
    raw: dict[str, object] = {
        "hooks": {
            "pd": {"type": "webhook", "url": "http://127.0.0.1:1/pd"},
            "ops": {"type": "webhook", "url": "http://127.0.0.1:1/ops"},
            "mail": {"type": "webhook", "url": "http://127.0.0.1:1/mail"},
        },
        "group_wait": 30, "group_interval": 300, "repeat_interval": 3600,
    }
    raw.update(extra)
    return NotifyConfig.model_validate(raw)


def test_a_burst_on_one_rack_is_one_notification_after_group_wait() -> None:
    router = Router(config())
    router.on_event(event("A01", "rack-power"), T0)
    router.on_event(event("A01", "rack-flow", severity=Severity.WARNING), T0 + 5 * S)
    router.on_event(event("A02", "rack-power"), T0 + 6 * S)
    assert router.due(T0 + 29 * S) == []
    assert router.next_due_ns() == T0 + 30 * S
    due = router.due(T0 + 30 * S)
    assert len(due) == 1  # one for A01; A02's group started 6 s later
    due += router.due(T0 + 36 * S)
    by_rack = {d.notification.group_labels["rack"]: d.notification for d in due}
    assert [a.rule for a in by_rack["A01"].alarms] == ["rack-power", "rack-flow"]
    assert by_rack["A01"].changed == {"rack-power/A01", "rack-flow/A01"}
    assert sorted(due[0].hooks) == ["mail", "ops", "pd"]  # no routes: every hook


def test_later_changes_wait_for_group_interval_and_resolved_are_sent() -> None:
    router = Router(config())
    router.on_event(event("A01"), T0)
    [first] = router.due(T0 + 30 * S)
    assert first.notification.status == "firing"
    router.on_event(event("A01", "rack-flow"), T0 + 40 * S)
    assert router.next_due_ns() == T0 + 330 * S
    assert router.due(T0 + 100 * S) == []
    router.on_event(event("A01", state=AlarmState.RESOLVED), T0 + 200 * S)
    [second] = router.due(T0 + 330 * S)
    states = {a.key: a.state for a in second.notification.alarms}
    assert states == {"rack-power/A01": AlarmState.RESOLVED, "rack-flow/A01": AlarmState.FIRING}
    assert second.notification.changed == {"rack-power/A01", "rack-flow/A01"}
    # The resolved alarm is gone from the group; the firing one stays.
    assert list(router.groups[second.notification.group_key].alarms) == ["rack-flow/A01"]


def test_same_state_again_is_not_news() -> None:
    """The rule engine re-announcing a firing alarm (e.g. after a restart) sends nothing."""
    router = Router(config())
    router.on_event(event("A01"), T0)
    router.due(T0 + 30 * S)
    router.on_event(event("A01", ts_ns=T0 + 50 * S), T0 + 50 * S)
    assert router.due(T0 + 3000 * S) == []


def test_resolved_before_it_was_ever_notified_sends_nothing() -> None:
    router = Router(config())
    router.on_event(event("A01"), T0)
    router.on_event(event("A01", state=AlarmState.RESOLVED), T0 + 10 * S)
    assert router.due(T0 + 60 * S) == []
    assert router.groups == {}


def test_send_resolved_off() -> None:
    router = Router(config(send_resolved=False))
    router.on_event(event("A01"), T0)
    router.due(T0 + 30 * S)
    router.on_event(event("A01", state=AlarmState.RESOLVED), T0 + 400 * S)
    assert router.due(T0 + 1000 * S) == []
    assert router.groups == {}


def test_repeat_for_firing_unacknowledged_until_acknowledged() -> None:
    router = Router(config())
    router.on_event(event("A01"), T0)
    router.due(T0 + 30 * S)
    assert router.next_due_ns() == T0 + 3630 * S
    assert router.due(T0 + 3629 * S) == []
    [reminder] = router.due(T0 + 3630 * S)
    assert reminder.notification.repeat and reminder.notification.changed == frozenset()
    assert "(reminder)" in reminder.notification.title
    router.on_event(event("A01", acknowledged=True), T0 + 3700 * S)
    assert router.next_due_ns() is None
    assert router.due(T0 + 99999 * S) == []


def test_routes_first_match_and_continue() -> None:
    router = Router(config(routes=[
        {"match": {"severity": ["critical"]}, "hooks": ["pd"], "continue": True},
        {"match": {"room": ["r1"], "rack": ["A*"]}, "hooks": ["ops"]},
        {"match": {}, "hooks": ["mail"]},
    ]))
    assert router.routes_for(event("A01", severity=Severity.CRITICAL)) == [0, 1]
    assert router.routes_for(event("A01", severity=Severity.WARNING)) == [1]
    assert router.routes_for(event("B01", severity=Severity.WARNING)) == [2]
    router.on_event(event("A01"), T0)
    hooks = sorted(h for d in router.due(T0 + 30 * S) for h in d.hooks)
    assert hooks == ["ops", "pd"]


def test_unmatched_alarm_is_counted_not_sent() -> None:
    router = Router(config(routes=[{"match": {"severity": ["critical"]}, "hooks": ["pd"]}]))
    router.on_event(event("A01", severity=Severity.WARNING), T0)
    assert router.unrouted == 1 and router.groups == {}


def test_per_route_group_by_and_timers() -> None:
    router = Router(config(routes=[
        {"match": {}, "hooks": ["ops"], "group_by": ["site", "cdu"], "group_wait": 0},
    ]))
    for rack in ("A01", "A02", "A03"):
        router.on_event(event(rack, "rack-flow", labels={"cdu": "cdu-1"}), T0)
    [due] = router.due(T0)
    assert due.notification.group_labels == {"site": "hall-1", "cdu": "cdu-1"}
    assert len(due.notification.alarms) == 3


def test_pending_is_ignored() -> None:
    router = Router(config())
    router.on_event(event("A01", state=AlarmState.PENDING), T0)
    assert router.groups == {}


def test_groups_survive_a_round_trip_through_json() -> None:
    router = Router(config())
    router.on_event(event("A01"), T0)
    router.due(T0 + 30 * S)
    router.on_event(event("A01", "rack-flow"), T0 + 31 * S)
    live, gone = router.take_changed()
    assert gone == [] and len(live) == 1
    copy = Router(config())
    copy.restore([Group.from_dict(json.loads(json.dumps(g.to_dict()))) for g in live])
    assert copy.next_due_ns() == router.next_due_ns()
    [due] = copy.due(T0 + 330 * S)
    assert due.notification.changed == {"rack-flow/A01"}


def test_escalation_to_critical_is_news_easing_is_not() -> None:
    router = Router(config())
    router.on_event(event("A01", severity=Severity.WARNING), T0)
    router.due(T0 + 30 * S)
    router.on_event(event("A01", severity=Severity.CRITICAL), T0 + 40 * S)
    [due] = router.due(T0 + 330 * S)
    assert due.notification.changed == {"rack-power/A01"} and due.notification.severity is Severity.CRITICAL
    router.on_event(event("A01", severity=Severity.WARNING), T0 + 400 * S)
    assert router.due(T0 + 1000 * S) == []


def test_alarms_without_the_grouping_labels_group_by_subject() -> None:
    router = Router(config(group_wait=0))
    for device in ("cdu-1", "ch-1"):
        e = event("X00", "leak")
        router.on_event(replace(e, key=f"leak/{device}", subject=device, labels={"site": "hall-1"}), T0)
    due = router.due(T0)
    assert sorted(d.notification.group_labels["subject"] for d in due) == ["cdu-1", "ch-1"]
    assert due[0].notification.title.startswith("[CRITICAL] hall-1 ")


def test_an_adopted_alarm_is_not_sent_again_and_its_resolve_is() -> None:
    """A cluster's new leader adopts the alarms the old one paged: the re-announced firing is not news, the
    resolve is sent (without adopt a resolve of a never-notified alarm is dropped, as the test above shows)."""
    router = Router(config(repeat_interval=0))
    router.adopt(event("A01"), T0)
    router.on_event(event("A01", ts_ns=T0 + 5 * S), T0 + 5 * S)
    assert router.due(T0 + 3000 * S) == []
    router.on_event(event("A01", state=AlarmState.RESOLVED), T0 + 3100 * S)
    [resolved] = router.due(T0 + 3100 * S)
    assert [a.state for a in resolved.notification.alarms] == [AlarmState.RESOLVED]
    assert router.groups == {}
    # Only firing alarms are adopted: a resolved one has nothing left to page.
    router.adopt(event("A02", state=AlarmState.RESOLVED), T0)
    assert router.groups == {}


def test_forget_drops_what_was_notified_so_a_new_firing_is_news() -> None:
    router = Router(config(repeat_interval=0))
    router.on_event(event("A01"), T0)
    assert len(router.due(T0 + 30 * S)) == 1
    router.take_changed()
    router.forget()
    live, gone = router.take_changed()
    assert router.groups == {} and live == [] and len(gone) == 1
    router.on_event(event("A01", ts_ns=T0 + 100 * S), T0 + 100 * S)
    assert len(router.due(T0 + 130 * S)) == 1
