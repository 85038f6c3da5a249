"""A demo View at its busiest: every device reporting (some offline), a tripped feed, and far more active
alarms than a 40-line screen holds, some of them suppressed, plus a long event history. Fed the way the demo
is fed: batches as the pipeline delivers them, status and alarms as the MQTT payloads the publisher sends."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dcim.app.config import load_config
from dcim.app.demo import View
from dcim.core.samples import Batch, Quality, Sample, Value

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hall.yaml"
API = "http://127.0.0.1:8470/"
OFFLINE = ("rpx-b02a", "chiller-2")
TRIPPED = "apc-a01a"  # the A feed of rack A01


def send(view: View, device: str, kind: str, values: dict[str, Value], bad: tuple[str, ...] = ()) -> None:
    now = time.time_ns()
    samples = [Sample(device, k, v, now, measurement=kind) for k, v in values.items()]
    samples += [Sample(device, k, None, now, Quality.BAD, "timeout", measurement=kind) for k in bad]
    view.on_batch(Batch(device, kind, now, samples))


def alarm(view: View, subject: str, rule: str, severity: str, message: str, suppressed: str = "",
          acknowledged: bool = False) -> None:
    payload: dict[str, Any] = {
        "key": f"{rule}/{subject}", "rule": rule, "subject": subject, "state": "firing", "severity": severity,
        "ts": time.time_ns(), "message": message, "metric": "", "value": None, "threshold": None, "labels": {},
        "acknowledged": acknowledged, "suppressed": suppressed}
    view.mqtt_message(f"dcim/hall-1/alarms/{subject}/{rule}", json.dumps(payload).encode())


def busiest(alarms_per_rack: int = 6) -> View:
    view = View(load_config(EXAMPLE))
    view.api_url = API
    view.broker = "127.0.0.1:40123 (embedded, topics dcim/#)"
    view.log_file = ".demo/state/demo.log"
    for device in view.config.devices:
        online = device.id not in OFFLINE
        status = {"device": device.id, "kind": device.kind, "online": online,
                  "error": None if online else "timeout after 400 ms", "ts": time.time_ns()}
        view.mqtt_message(f"dcim/hall-1/status/{device.id}", json.dumps(status).encode())
        if device.kind == "pdu":
            watts = 0.0 if device.id == TRIPPED else 71234.0
            send(view, device.id, "pdu", {"power_w": watts, "energy_kwh": 123456.7})
        elif device.kind == "cdu":
            send(view, device.id, "cdu", {"supply_temp_c": 32.4, "return_temp_c": 61.9, "flow_lpm": 0.0,
                                          "pump1_speed_pct": 0.0, "pump2_speed_pct": 0.0,
                                          "diff_pressure_kpa": 0.0, "leak": True}, bad=("reservoir_level",))
        else:
            send(view, device.id, "chiller", {"leaving_temp_c": 14.9, "setpoint_c": 7.0, "cooling_kw": 0.0,
                                              "cop": 0.0, "status": "tripped"})
    for _, _, rack in view.config.racks():
        a_kw = 0.0 if rack.id == "A01" else 71.2
        send(view, rack.id, "rack", {"power_a_kw": a_kw, "power_b_kw": 71.2, "power_kw": a_kw + 71.2,
                                     "utilization_pct": (a_kw + 71.2) / rack.power_budget_kw * 100,
                                     "redundant_headroom_kw": -71.2 if rack.id == "A01" else 23.4,
                                     "flow_required_lpm": 213.6, "flow_delivered_lpm": 0.0})
        for i in range(alarms_per_rack):
            severity = "critical" if i % 2 == 0 else "warning"
            held = ["", "shelved", "maintenance", "inhibited by cdu-pump-fault/cdu-1"][i % 4]
            alarm(view, rack.id, f"rule-{i}", severity, f"rack {rack.id} condition number {i} with a long message "
                  f"that goes on to test the ellipsis of the alarm column", held, acknowledged=i == 1)
    alarm(view, "cdu-1", "cdu-pump-fault", "critical", "cdu-1 pump fault: all pumps stopped")
    alarm(view, "chiller-1", "chiller-trip", "critical", "chiller-1 tripped or locked out")
    for n in range(30):
        view.event(f"inject: event number {n} with a long text that runs past the right edge of a 120-column "
                   f"terminal to test that the events panel cuts it with an ellipsis instead of wrapping")
    return view
