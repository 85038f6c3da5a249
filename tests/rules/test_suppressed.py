"""Suppressed alarms are shown as suppressed, with the alarm that suppresses them, wherever alarms show:
`dcim alarms`, /api/v1/alarms, the retained MQTT alarm (through a real Mosquitto) and the demo screen.

The story each time: cdu-1's pumps fail (a loop fault), its racks' coolant alarms fire inhibited by it; a
PDU stops answering and the rack alarms that depend on it are inhibited by its communication alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
import yaml
from pydantic import SecretStr

from dcim.app.cli import main
from dcim.app.config import HttpConfig
from dcim.app.demo import View
from dcim.app.http_api import HttpApi
from dcim.app.publisher import MqttPublisher
from dcim.core.journal import Outbox
from dcim.rules.inhibit import split
from tests.helpers import wait_until
from tests.http_api.conftest import serving
from tests.rules.rig import Rig, hall
from tests.rules.test_inhibition import loop_down
from tests.servers import Mosquitto

COOLANT = "liquid-rack-coolant-flow/A01"
ROOT = "cdu-pump-fault/cdu-1"


def suppressed_story(rig: Rig) -> None:
    rig.run(5)
    loop_down(rig, 60)


def test_the_silencer_names_the_root_cause(tmp_path: Path) -> None:
    rig = Rig(hall(tmp_path))
    suppressed_story(rig)
    record = rig.service.store.get(COOLANT)
    # The pump fault fired first (at once), the low flow 10 s later: the root cause speaks for the racks.
    assert split(record.suppressed) == ("inhibited", ROOT)
    # A PDU that stops answering: the rack's alarms that depend on it name its communication alarm.
    rig.status("pdu-A02-a", False, "timeout")
    rig.service.refresh()
    held = {a.key: a.suppressed for a in rig.service.store.active() if a.subject == "A02"}
    assert held and all(v == "inhibited by device-offline/pdu-A02-a" for v in held.values()), held
    rig.service.store.close()


async def test_dcim_alarms_shows_suppressed_and_by_what(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = hall(tmp_path / "state")
    config_file = tmp_path / "dcim.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    rig = Rig(raw)
    suppressed_story(rig)
    rig.service.store.close()
    assert main(["alarms", "-c", str(config_file)]) == 0
    lines = {line.split()[4]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert f"[suppressed: inhibited by {ROOT}]" in lines[COOLANT]
    assert "suppressed" not in lines[ROOT]                   # the root cause itself is not held back
    assert main(["alarms", "-c", str(config_file), "--json"]) == 0
    records = {r["key"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert records[COOLANT]["suppressed"] == f"inhibited by {ROOT}"
    assert records[ROOT]["suppressed"] == ""


async def test_http_api_shows_suppressed_and_by_what(tmp_path: Path) -> None:
    rig = Rig(hall(tmp_path))
    suppressed_story(rig)
    api = HttpApi(HttpConfig(port=0, token=SecretStr("t" * 32)), rig.service.store)
    async with serving(api) as url, aiohttp.ClientSession() as http:
        async with http.get(url + "/api/v1/alarms") as response:
            assert response.status == 200
            alarms = {a["key"]: a for a in (await response.json())["alarms"]}
        async with http.get(url + f"/api/v1/alarms/{COOLANT}") as response:
            one = (await response.json())["alarm"]
    assert alarms[COOLANT]["suppressed"] == f"inhibited by {ROOT}"
    assert alarms[ROOT]["suppressed"] == ""
    assert one["suppressed"] == f"inhibited by {ROOT}"
    rig.service.store.close()


async def test_mqtt_payload_and_demo_screen_show_suppressed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rig = Rig(hall(tmp_path))
    mqtt = rig.config.mqtt.model_copy(update={"host": mosquitto.host, "port": mosquitto.port})
    box = Outbox(tmp_path / "mqtt-outbox.sqlite", name="mqtt", max_items=10_000)
    await box.open()
    publisher = MqttPublisher(mqtt, rig.topology, box)
    rig.service.alarm_outlet = publisher
    view = View(rig.config)
    retained: dict[str, Any] = {}
    base = f"{mqtt.prefix}/{rig.topology.site}/alarms"
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(box.run()), tg.create_task(publisher.run())]
        try:
            suppressed_story(rig)
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="test-suppressed") as client:
                await client.subscribe(f"{base}/#", qos=1)

                async def collect() -> None:
                    async for message in client.messages:
                        payload = bytes(message.payload)
                        view.mqtt_message(str(message.topic), payload)
                        retained[str(message.topic)] = json.loads(payload) if payload else None

                reader = asyncio.create_task(collect())
                try:
                    wanted = f"{base}/A01/liquid-rack-coolant-flow"
                    await wait_until(lambda: (retained.get(wanted) or {}).get("suppressed"), timeout=30,
                                     message="the coolant alarm's retained payload")
                    assert retained[wanted]["suppressed"] == f"inhibited by {ROOT}"
                    assert (retained.get(f"{base}/cdu-1/cdu-pump-fault") or {}).get("suppressed") == ""
                    # The reason changes while the alarm fires (its PDU stops answering): the retained
                    # payload follows, so a subscriber always sees what holds the alarm back now.
                    rig.status("pdu-A01-a", False, "timeout")
                    rig.service.refresh()
                    offline = "inhibited by device-offline/pdu-A01-a"
                    await wait_until(lambda: retained[wanted]["suppressed"] == offline, timeout=30,
                                     message="the retained payload after the PDU went offline")
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
        finally:
            for task in tasks:
                task.cancel()
    await box.close()
    screen = view.render()
    coolant_line = next(line for line in screen.splitlines() if "coolant flow" in line and "A01" in line)
    assert coolant_line.lstrip().startswith("suppr.") and "[inhibited by device-offline/pdu-A01-a]" in coolant_line
    pump_line = next(line for line in screen.splitlines() if "pump fault" in line)
    assert pump_line.lstrip().startswith("critical") and "inhibited" not in pump_line
    assert "suppressed):" in screen
    rig.service.store.close()
