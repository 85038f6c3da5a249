"""The operator's path across parts: the rule engine fires, the notifier pages, an acknowledgement through
the HTTP API stops the reminders, and the resolve still arrives. Real RuleService and store (tests/rules
rig with a fake clock), real Notifier, real HTTP API, a real local webhook receiver."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from pydantic import SecretStr

from dcim.app.config import HttpConfig
from dcim.app.http_api import HttpApi
from dcim.rules.notify import Notifier
from tests.http_api.conftest import TOKEN, auth, serving
from tests.notify.conftest import advance, running, webhook_config
from tests.receivers import HttpReceiver
from tests.rules.rig import Rig, hall


def leak(rig: Rig, wet: bool = True) -> None:
    rig.clock.advance(1)
    rig.healthy()
    rig.cdu("cdu-1", leak=wet)
    rig.service.tick()


async def test_ack_over_http_stops_reminders_and_the_resolve_arrives(
    tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    rig = Rig(hall(tmp_path / "hall"))
    notifier = Notifier(webhook_config(http_receiver.url, group_wait=0, repeat_interval="1h"), tmp_path,
                        clock=rig.clock)
    rig.service.notifier = notifier
    api = HttpApi(HttpConfig(port=0, token=SecretStr(TOKEN)), rig.service.store)
    async with running(notifier), serving(api) as url, aiohttp.ClientSession() as http:
        leak(rig)
        [page] = await http_receiver.wait_for(1)
        assert [(a["key"], a["state"]) for a in page.json()["alarms"]] == [("cdu-leak/cdu-1", "firing")]
        async with http.post(url + "/api/v1/alarms/cdu-leak/cdu-1/ack", headers=auth(),
                             json={"user": "alice"}) as r:
            assert r.status == 200
        await advance(rig.clock, notifier, 3 * 3600)
        assert len(http_receiver.requests) == 1  # no reminders once acknowledged
        leak(rig, wet=False)
        await advance(rig.clock, notifier, 60)
        _, resolved = await http_receiver.wait_for(2)
        assert resolved.json()["status"] == "resolved"
        assert resolved.json()["alarms"][0]["key"] == "cdu-leak/cdu-1"
    rig.service.store.close()


async def test_without_ack_the_reminder_comes(tmp_path: Path, http_receiver: HttpReceiver) -> None:
    rig = Rig(hall(tmp_path / "hall"))
    notifier = Notifier(webhook_config(http_receiver.url, group_wait=0, repeat_interval="1h"), tmp_path,
                        clock=rig.clock)
    rig.service.notifier = notifier
    async with running(notifier):
        leak(rig)
        await http_receiver.wait_for(1)
        await advance(rig.clock, notifier, 3600)
        _, reminder = await http_receiver.wait_for(2)
        assert reminder.json()["repeat"] is True
    rig.service.store.close()
