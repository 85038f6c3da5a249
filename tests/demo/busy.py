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


# (rule, severity, message, suppressed) for each rack (`{c}`: its cooling), the busiest moment has them all firing.
RACK_ALARMS = [
    ("{c}-rack-redundancy", "critical", "either feed must carry the whole rack: redundant_headroom_kw {h} < 0", ""),
    ("{c}-rack-coolant-flow", "critical", "coolant flow delivered against required: flow_ratio_pct 0 < 70",
     "inhibited by cdu-pump-fault/cdu-1"),
    ("{c}-rack-power-budget", "warning", "rack power against the budget its cooling supports: "
     "cooled_utilization_pct 95 > 90", ""),
    ("{c}-rack-heat-capture", "warning", "share of the rack's heat the liquid loop carries: heat_ratio_pct 0 < 80",
     "inhibited by cdu-pump-fault/cdu-1"),
    ("{c}-rack-branch-load", "warning", "continuous branch load against the breaker: branch_load_pct 83 > 80",
     "shelved"),
    ("{c}-rack-phase-imbalance", "warning", "phase imbalance of a feed: phase_imbalance_pct 16 > 15",
     "maintenance"),
]
# What the screen's event panel has seen by then (seconds since start, text), oldest first.
EVENTS = [(20, "inject: pump failure on cdu-1"), (21, "ALARM CRITICAL: cdu-1: pump fault (pump_fault = True)"),
          (60, "clear: pumps of cdu-1 restored"), (65, "inject: feed trip on apc-a01a"),
          (76, "ALARM CRITICAL: A01: either feed must carry the whole rack: redundant_headroom_kw -135.0 < 0"),
          (105, "inject: standby chiller-2 locked out"), (110, "inject: chiller-1 trips"),
          (112, "ALARM CRITICAL: chiller-1: chiller tripped or locked out (status = tripped) - a long line that "
                "runs past the right edge of a 120-column terminal, to be cut with an ellipsis, not wrapped")]


def busiest(alarms_per_rack: int = len(RACK_ALARMS)) -> View:
    view = View(load_config(EXAMPLE))
    view.api_url = API
    view.broker = "127.0.0.1:40123 (embedded, topics dcim/#)"
    view.log_file = ".demo/state/demo.log"
    # A frozen clock: a frame drawn twice must not differ by a second that went by between the two.
    now = [view.started]
    view.clock = lambda: now[0]
    started = view.started
    racks = {rack.id: rack for _, _, rack in view.config.racks()}
    for device in view.config.devices:
        online = device.id not in OFFLINE
        status = {"device": device.id, "kind": device.kind, "online": online,
                  "error": None if online else "timeout after 400 ms", "ts": time.time_ns()}
        view.mqtt_message(f"dcim/hall-1/status/{device.id}", json.dumps(status).encode())
        if device.kind == "pdu":
            rack, _ = view.feeds[device.id]
            kw = 0.9 * racks[rack].power_budget_kw / 2
            # The tripped feed draws nothing; its energy counter holds what it had counted.
            energy = round(kw * 1013.7, 1)
            kw = 0.0 if device.id == TRIPPED else 2 * kw if rack == "A01" else kw
            if online:
                send(view, device.id, "pdu", {"power_w": round(kw * 1000), "energy_kwh": energy})
            else:  # what the poller reports for a device that does not answer: every point BAD
                send(view, device.id, "pdu", {}, bad=("power_w", "energy_kwh"))
        elif device.kind == "cdu":
            send(view, device.id, "cdu", {"supply_temp_c": 32.4, "return_temp_c": 61.9, "flow_lpm": 0.0,
                                          "pump1_speed_pct": 0.0, "pump2_speed_pct": 0.0,
                                          "diff_pressure_kpa": 0.0, "leak": True}, bad=("reservoir_level",))
        else:
            send(view, device.id, "chiller", {"leaving_temp_c": 14.9, "setpoint_c": 7.0, "cooling_kw": 0.0,
                                              "cop": 0.0, "status": "tripped"})
    for rack in racks.values():
        half = 0.9 * rack.power_budget_kw / 2
        a_kw, b_kw = (0.0, 2 * half) if rack.id == "A01" else (half, half)
        total = a_kw + b_kw
        # A01 runs on its B feed alone; the others' feeds could not carry the whole rack alone either.
        capacity = 0.0 if rack.id == "A01" else total - 4.0
        send(view, rack.id, "rack", {"power_a_kw": a_kw, "power_b_kw": b_kw, "power_kw": total,
                                     "utilization_pct": total / rack.power_budget_kw * 100,
                                     "redundant_headroom_kw": round(capacity - total, 1),
                                     "flow_required_lpm": 1.5 * total if rack.cdu else None,
                                     "flow_delivered_lpm": 0.0 if rack.cdu else None})
        for rule, severity, message, held in RACK_ALARMS[:alarms_per_rack]:
            if rack.cooling == "air" and ("coolant" in rule or "heat" in rule):
                continue
            name = rule.format(c=rack.cooling)
            alarm(view, rack.id, name, severity, f"{rack.id}: {message.format(h=round(capacity - total, 1))}", held,
                  acknowledged=name.endswith("budget"))
    alarm(view, "cdu-1", "cdu-pump-fault", "critical", "cdu-1: pump fault (pump_fault = True)")
    alarm(view, "chiller-1", "chiller-trip", "critical", "chiller-1: chiller tripped or locked out (status = tripped)")
    alarm(view, "rpx-b02a", "device-offline", "warning", "rpx-b02a: not answering (timeout after 400 ms)")
    # The event history of the story, in place of the lines the alarms above added all at once.
    view.events.clear()
    for at, text in EVENTS:
        now[0] = started + at
        view.event(text)
    now[0] = started + 127
    return view
