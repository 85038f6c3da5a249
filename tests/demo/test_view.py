"""What the demo's View makes of what it receives."""

from __future__ import annotations

import json

from dcim.app.config import load_config
from dcim.app.demo import View
from dcim.core.samples import DeviceStatus
from tests.demo.busy import EXAMPLE


def test_a_status_from_the_broker_older_than_the_pipelines_does_not_win() -> None:
    view = View(load_config(EXAMPLE))
    view.on_status(DeviceStatus("apc-a01a", "pdu", True, 2_000))
    # The broker delivers the change before it, late (its outbox ran behind the poller).
    stale = {"device": "apc-a01a", "kind": "pdu", "online": False, "error": "timeout", "ts": 1_000}
    view.mqtt_message("dcim/hall-1/status/apc-a01a", json.dumps(stale).encode())
    assert view.device_state("apc-a01a") == ("online", "")
    newer = {**stale, "ts": 3_000}
    view.mqtt_message("dcim/hall-1/status/apc-a01a", json.dumps(newer).encode())
    assert view.device_state("apc-a01a") == ("offline", "timeout")
