"""The notifier as the rule engine uses it: submit events, hooks on real local receivers receive them.

Time is a fake clock (group_wait, group_interval, repeat); retries use real but tiny backoffs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dcim.core.events import AlarmState, Severity
from dcim.core.metrics import REGISTRY
from dcim.rules.clock import FakeClock
from dcim.rules.notify import Notifier
from dcim.rules.notify.config import NotifyConfig
from tests.helpers import wait_until
from tests.notify.conftest import FAST_RETRY, advance, event, running, webhook_config
from tests.receivers import HttpReceiver


async def test_burst_on_one_rack_is_one_notification(
    receiver: HttpReceiver, clock: FakeClock, state_dir: Path
) -> None:
    notifier = Notifier(webhook_config(receiver.url), state_dir, clock=clock)
    async with running(notifier):
        notifier.submit(event("A01", "rack-power"))
        notifier.submit(event("A01", "rack-flow", severity=Severity.WARNING))
        await advance(clock, notifier, 5)
        notifier.submit(event("A01", "rack-supply-temp"))
        await advance(clock, notifier, 4)
        assert receiver.requests == [] and notifier.outboxes["ops"].depth == 0
        await advance(clock, notifier, 1)
        [req] = await receiver.wait_for(1)
        body = req.json()
        assert body["counts"] == {"firing": 3, "resolved": 0}
        # Resolved: after group_interval, one notification again.
        notifier.submit(event("A01", "rack-power", state=AlarmState.RESOLVED))
        notifier.submit(event("A01", "rack-flow", state=AlarmState.RESOLVED))
        await advance(clock, notifier, 59)
        assert len(receiver.requests) == 1
        await advance(clock, notifier, 1)
        _, req2 = await receiver.wait_for(2)
        body2 = req2.json()
        assert body2["counts"] == {"firing": 1, "resolved": 2}
        assert {a["key"] for a in body2["alarms"] if a["changed"]} == {"rack-power/A01", "rack-flow/A01"}


async def test_repeat_until_acknowledged(receiver: HttpReceiver, clock: FakeClock, state_dir: Path) -> None:
    notifier = Notifier(webhook_config(receiver.url, repeat_interval="1h"), state_dir, clock=clock)
    async with running(notifier):
        notifier.submit(event("A01"))
        await advance(clock, notifier, 10)
        await receiver.wait_for(1)
        await advance(clock, notifier, 3600)
        _, reminder = await receiver.wait_for(2)
        assert reminder.json()["repeat"] is True and "(reminder)" in reminder.json()["title"]
        notifier.submit(event("A01", acknowledged=True))
        await notifier.idle()
        await advance(clock, notifier, 7200)
        assert len(receiver.requests) == 2


async def test_hook_down_retried_with_backoff_nothing_lost(
    receiver: HttpReceiver, clock: FakeClock, state_dir: Path
) -> None:
    notifier = Notifier(webhook_config(receiver.url, group_wait=0), state_dir, clock=clock)
    retries = REGISTRY.counter("dcim_notify_retries_total", "", ("hook",))
    before = retries.get(hook="ops")
    async with running(notifier):
        receiver.fail_next(3, status=500)
        notifier.submit(event("A01"))
        await notifier.idle()
        requests = await receiver.wait_for(4)  # three 500s, then the accepted one
        assert [r.json()["alarms"][0]["key"] for r in requests] == ["rack-power/A01"] * 4
        assert len({r.headers["idempotency-key"] for r in requests}) == 1
        assert retries.get(hook="ops") - before == 3
        await wait_until(lambda: notifier.outboxes["ops"].depth == 0, message="delivery acknowledged")
        # Connection refused: the port is closed while alarms keep coming; submit still returns at once.
        receiver.stop()
        delivered = len(receiver.requests)
        for rack in ("A02", "A03", "A04"):
            notifier.submit(event(rack))
        # submit is a plain call (it cannot await, so it does no I/O and returns at once: structural, not
        # timed); it only queues, so nothing reached the hook while it ran.
        assert len(receiver.requests) == delivered
        await advance(clock, notifier, 0)
        assert notifier.outboxes["ops"].depth >= 1
        receiver.start()
        await wait_until(lambda: notifier.outboxes["ops"].depth == 0, message="the hook catches up")
        racks = sorted(r.json()["group"]["labels"]["rack"] for r in receiver.requests[4:])
        assert racks == ["A02", "A03", "A04"]


async def test_one_hook_down_does_not_hold_up_another(
    receiver: HttpReceiver, second_receiver: HttpReceiver, clock: FakeClock, state_dir: Path
) -> None:
    config = NotifyConfig.model_validate({
        "hooks": {"down": {"type": "webhook", "url": receiver.url + "/down"},
                  "up": {"type": "webhook", "url": second_receiver.url + "/up"}},
        "group_wait": 0, "retry": FAST_RETRY,
    })
    receiver.respond(503, "down for maintenance")
    notifier = Notifier(config, state_dir, clock=clock)
    async with running(notifier):
        notifier.submit(event("A01"))
        notifier.submit(event("B01"))
        got = await second_receiver.wait_for(2)
        assert sorted(r.json()["group"]["labels"]["rack"] for r in got) == ["A01", "B01"]
        await receiver.wait_for(3)  # still being retried
        assert notifier.health()["down"]["up"] is False and notifier.health()["up"]["up"] is True
        receiver.respond(200)
        await wait_until(lambda: notifier.outboxes["down"].depth == 0, message="the down hook catches up")
        racks = {r.json()["group"]["labels"]["rack"] for r in receiver.requests}
        assert racks == {"A01", "B01"}


async def test_restart_sends_nothing_twice(receiver: HttpReceiver, clock: FakeClock, state_dir: Path) -> None:
    config = webhook_config(receiver.url)
    notifier = Notifier(config, state_dir, clock=clock)
    async with running(notifier):
        notifier.submit(event("A01"))
        await advance(clock, notifier, 10)
        await receiver.wait_for(1)
        await wait_until(lambda: notifier.outboxes["ops"].depth == 0, message="delivery acknowledged")
    # The rule engine re-announces its firing alarms after a restart: not news.
    notifier = Notifier(config, state_dir, clock=clock)
    async with running(notifier):
        notifier.submit(event("A01"))
        await advance(clock, notifier, 600)
        assert len(receiver.requests) == 1 and notifier.outboxes["ops"].depth == 0
        notifier.submit(event("A01", state=AlarmState.RESOLVED))
        await advance(clock, notifier, 60)
        _, resolved = await receiver.wait_for(2)
        assert resolved.json()["status"] == "resolved"


async def test_restart_delivers_what_was_queued_exactly_once(
    receiver: HttpReceiver, clock: FakeClock, state_dir: Path
) -> None:
    config = webhook_config(receiver.url, group_wait=0)
    receiver.stop()
    notifier = Notifier(config, state_dir, clock=clock)
    async with running(notifier):
        notifier.submit(event("A01"))
        await notifier.idle()
        assert notifier.outboxes["ops"].depth == 1
    receiver.start()
    notifier = Notifier(config, state_dir, clock=clock)
    async with running(notifier):
        [req] = await receiver.wait_for(1)
        assert req.json()["alarms"][0]["key"] == "rack-power/A01"
        await wait_until(lambda: notifier.outboxes["ops"].depth == 0, message="delivery acknowledged")
        notifier.submit(event("A01"))
        await advance(clock, notifier, 600)
    assert len(receiver.requests) == 1


async def test_storm_sends_a_bounded_number_with_a_summary(
    receiver: HttpReceiver, clock: FakeClock, state_dir: Path
) -> None:
    config = webhook_config(receiver.url, group_wait=0,
                            rate_limit={"per_hook_per_minute": 5, "global_per_minute": 100})
    suppressed = REGISTRY.counter("dcim_notify_suppressed_total", "", ("hook",))
    before = suppressed.get(hook="ops")
    queued = REGISTRY.counter("dcim_notify_messages_total", "", ("hook", "kind"))
    queued_before, summaries_before = queued.get(hook="ops", kind="alarms"), queued.get(hook="ops", kind="summary")
    notifier = Notifier(config, state_dir, clock=clock)
    async with running(notifier):
        for i in range(40):  # every rack of a CDU loop at once
            notifier.submit(event(f"L{i:02d}", "rack-flow", labels={"cdu": "cdu-1"}))
        await notifier.idle()
        await receiver.wait_for(5)
        assert suppressed.get(hook="ops") - before == 35
        await advance(clock, notifier, 60)
        requests = await receiver.wait_for(6)
        summary = requests[5].json()
        assert summary["kind"] == "summary" and summary["suppressed"] == 35
        assert len(summary["alarms"]) == 35 and "35 more notifications" in summary["title"]
        await advance(clock, notifier, 600)
    # Everything ever queued for the hook: the bound plus one summary.
    assert queued.get(hook="ops", kind="alarms") - queued_before == 5
    assert queued.get(hook="ops", kind="summary") - summaries_before == 1
    assert len(receiver.requests) == 6


async def test_no_hooks_means_no_work(clock: FakeClock, state_dir: Path) -> None:
    notifier = Notifier(NotifyConfig(), state_dir, clock=clock)
    async with running(notifier):
        notifier.submit(event("A01"))
    assert not (state_dir / "notify").exists()


async def test_an_unreadable_state_row_costs_only_itself(
    receiver: HttpReceiver, clock: FakeClock, state_dir: Path
) -> None:
    config = webhook_config(receiver.url, group_wait=0)
    notifier = Notifier(config, state_dir, clock=clock)
    async with running(notifier):
        notifier.submit(event("A01"))
        await receiver.wait_for(1)
        await wait_until(lambda: notifier.outboxes["ops"].depth == 0, message="delivery acknowledged")
    db = sqlite3.connect(state_dir / "notify" / "state.sqlite")
    with db:
        db.execute("INSERT INTO groups (key, data) VALUES ('broken', '{not json')")
        db.execute("INSERT INTO groups (key, data) VALUES ('partial', ?)", ('{"key": "x"}',))
    db.close()
    notifier = Notifier(config, state_dir, clock=clock)
    async with running(notifier):
        assert list(notifier.router.groups) == ["-1|site=hall-1|rack=A01"]
        notifier.submit(event("A01"))  # still known as notified: not sent again
        notifier.submit(event("A02"))
        await notifier.idle()
        requests = await receiver.wait_for(2)
        assert [r.json()["group"]["labels"]["rack"] for r in requests] == ["A01", "A02"]
    db = sqlite3.connect(state_dir / "notify" / "state.sqlite")
    keys = sorted(k for (k,) in db.execute("SELECT key FROM groups"))
    db.close()
    assert keys == ["-1|site=hall-1|rack=A01", "-1|site=hall-1|rack=A02"]


async def test_a_refused_message_is_given_up_and_counted_the_next_goes_through(
    receiver: HttpReceiver, clock: FakeClock, state_dir: Path
) -> None:
    deliveries = REGISTRY.counter("dcim_notify_deliveries_total", "", ("hook", "result"))
    failed_before = deliveries.get(hook="ops", result="failed")
    notifier = Notifier(webhook_config(receiver.url, group_wait=0), state_dir, clock=clock)
    async with running(notifier):
        receiver.fail_next(1, status=400)
        notifier.submit(event("A01"))
        await receiver.wait_for(1)
        notifier.submit(event("A02"))
        requests = await receiver.wait_for(2)
        await wait_until(lambda: notifier.outboxes["ops"].depth == 0, message="outbox drained")
    assert [r.json()["group"]["labels"]["rack"] for r in requests] == ["A01", "A02"]  # no retry of A01
    assert deliveries.get(hook="ops", result="failed") - failed_before == 1
