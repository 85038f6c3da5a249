"""What a cluster's leader needs of the notifier for pages at least once (Notifier.track_deliveries): an alarm
event is reported delivered only once its hook took the message, on a real webhook receiver that refuses
first; and what the notifier held when the leadership ended (`forget`) is never sent, not even when the
hook it was retrying comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dcim.core.events import AlarmEvent, AlarmState
from dcim.rules.clock import FakeClock
from dcim.rules.notify import Notifier
from tests.helpers import wait_until
from tests.notify.conftest import event, running, webhook_config
from tests.receivers import HttpReceiver


class Deliveries:
    def __init__(self) -> None:
        self.events: list[AlarmEvent] = []
        self.changed = asyncio.Event()

    def __call__(self, events: list[AlarmEvent]) -> None:
        self.events.extend(events)
        self.changed.set()

    async def wait_for(self, key: str, state: AlarmState) -> None:
        while not any(e.key == key and e.state is state for e in self.events):
            self.changed.clear()
            await self.changed.wait()

    def seen(self) -> list[tuple[str, AlarmState]]:
        return [(e.key, e.state) for e in self.events]


def keys_sent(receiver: HttpReceiver) -> list[str]:
    return [a["key"] for r in receiver.requests for a in r.json()["alarms"]]


async def test_a_page_is_reported_delivered_only_once_its_hook_took_it(
    http_receiver: HttpReceiver, tmp_path: Path
) -> None:
    notifier = Notifier(webhook_config(http_receiver.url, group_wait=0, group_interval="1s"), tmp_path / "state",
                        clock=FakeClock())
    deliveries = Deliveries()
    notifier.track_deliveries(deliveries)
    async with running(notifier):
        http_receiver.fail_next(2, status=500)
        notifier.submit(event("A01"))
        await deliveries.wait_for("rack-power/A01", AlarmState.FIRING)
        # Two refusals, then the message the hook took: reported once, after that.
        assert keys_sent(http_receiver) == ["rack-power/A01"] * 3
        assert deliveries.seen() == [("rack-power/A01", AlarmState.FIRING)]


async def test_what_the_notifier_held_when_the_leadership_ended_is_not_sent(
    http_receiver: HttpReceiver, tmp_path: Path
) -> None:
    clock = FakeClock()
    notifier = Notifier(webhook_config(http_receiver.url, group_wait=0, group_interval="1s"), tmp_path / "state",
                        clock=clock)
    deliveries = Deliveries()
    notifier.track_deliveries(deliveries)
    async with running(notifier):
        http_receiver.stop()  # not listening: the message waits in the outbox, retried with backoff
        notifier.submit(event("A02"))
        await wait_until(lambda: notifier.deliveries["ops"].failing, timeout=60, message="the hook failing")
        notifier.forget()  # the leadership ends
        http_receiver.start()
        # A later leadership's page goes out; the one retried when the leadership ended does not.
        notifier.submit(event("A03"))
        await deliveries.wait_for("rack-power/A03", AlarmState.FIRING)
        await notifier.idle()
        assert notifier.outboxes["ops"].depth == 0
        assert keys_sent(http_receiver) == ["rack-power/A03"]
        assert deliveries.seen() == [("rack-power/A03", AlarmState.FIRING)]
