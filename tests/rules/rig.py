"""A test rig for the rule engine: a small hall, a fake clock, a service whose outlets record.

The recorders stand in for the daemon's MQTT publisher and the notifier, whose own tests cover them; the
rule engine, store (real SQLite in a temp dir) and pipeline are the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcim.app.config import Config, parse_config
from dcim.core.events import AlarmEvent, AlarmState
from dcim.core.pipeline import Pipeline
from dcim.core.samples import Batch, DeviceStatus, Sample, Value
from dcim.core.topology import Topology
from dcim.rules.clock import FakeClock
from dcim.rules.service import RuleService


def hall(state_dir: Path, rules: dict[str, Any] | None = None, breaker_a: float = 250.0) -> dict[str, Any]:
    """Four liquid racks on two CDUs (A/B feeds each), two air racks (A/B feeds), one chiller."""
    def feeds(rack: str) -> dict[str, Any]:
        return {"a": {"pdu": f"pdu-{rack}-a", "breaker_a": breaker_a},
                "b": {"pdu": f"pdu-{rack}-b", "breaker_a": breaker_a}}
    liquid = [("A01", "cdu-1"), ("A02", "cdu-1"), ("B01", "cdu-2"), ("B02", "cdu-2")]
    air = ["C01", "C02"]
    devices: list[dict[str, Any]] = [
        {"id": "cdu-1", "kind": "cdu", "protocol": "modbus", "port": 15020, "profile": "generic-cdu"},
        {"id": "cdu-2", "kind": "cdu", "protocol": "modbus", "port": 15021, "profile": "generic-cdu"},
        {"id": "ch-1", "kind": "chiller", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:14840",
         "profile": "generic-chiller"},
    ]
    for rack in [r for r, _ in liquid] + air:
        for side in "ab":
            devices.append({"id": f"pdu-{rack}-{side}", "kind": "pdu", "protocol": "snmp", "port": 16100,
                            "profile": "apc-rpdu2"})
    return {
        "site": {"id": "hall-1"},
        "rooms": [{"id": "dh1", "rows": [
            {"id": "A", "racks": [{"id": r, "cooling": "liquid", "power_budget_kw": 150, "cdu": c,
                                   "feeds": feeds(r)} for r, c in liquid]},
            {"id": "C", "racks": [{"id": r, "cooling": "air", "power_budget_kw": 50, "feeds": feeds(r)}
                                  for r in air]},
        ]}],
        "devices": devices,
        "state_dir": str(state_dir),
        "rules": rules or {},
    }


def make_config(raw: dict[str, Any]) -> Config:
    return parse_config(raw, "test")


@dataclass
class Recorder:
    events: list[AlarmEvent] = field(default_factory=list)

    def alarm_changed(self, event: AlarmEvent) -> None:
        self.events.append(event)

    def submit(self, event: AlarmEvent) -> None:
        self.events.append(event)

    def fired(self) -> list[str]:
        return [e.key for e in self.events if e.state is AlarmState.FIRING]

    def resolved(self) -> list[str]:
        return [e.key for e in self.events if e.state is AlarmState.RESOLVED]


@dataclass
class FakeController:
    """Test double of the daemon's write routing (driver write paths are tested with the drivers)."""

    writes: list[tuple[str, str, Value]] = field(default_factory=list)

    async def write(self, device: str, point: str, value: Value, *, origin: str = "rule") -> None:
        self.writes.append((device, point, value))


class Rig:
    """A RuleService on a real Pipeline, with a fake clock and recording outlets."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.config = make_config(raw)
        self.topology = Topology(self.config)
        self.clock = FakeClock()
        self.pipeline = Pipeline()
        self.outlet = Recorder()
        self.notifier = Recorder()
        self.controller = FakeController()
        self.published: list[Batch] = []
        self.service = RuleService(self.config, self.topology, controller=self.controller,
                                   publish=self.pipeline.publish, alarm_outlet=self.outlet,
                                   notifier=self.notifier, clock=self.clock)
        self.pipeline.add_sink(self.service.sink)
        self.pipeline.add_sink(self)

    # the rig is also the pipeline's last sink, like the MQTT publisher
    def on_batch(self, batch: Batch) -> None:
        self.published.append(batch)

    def on_status(self, status: DeviceStatus) -> None:
        pass

    def send(self, device: str, kind: str, values: dict[str, Value],
             rows: dict[Any, Any] | None = None) -> None:
        now = self.clock.now_ns()
        samples = [Sample(device, k, v, now, measurement=kind) for k, v in values.items()]
        for tags, row in (rows or {}).items():
            samples += [Sample(device, k, v, now, measurement=kind, tags=tags) for k, v in row.items()]
        self.pipeline.publish(Batch(device, kind, now, samples))

    def status(self, device: str, online: bool, error: str = "") -> None:
        self.pipeline.status(DeviceStatus(device, self.topology.kinds[device], online, self.clock.now_ns(), error))

    def feed(self, rack: str, kw_a: float, kw_b: float, *, tripped: str = "",
             phases: tuple[float, float, float] | None = None) -> None:
        for side, kw in (("a", kw_a), ("b", kw_b)):
            rows = None
            if phases is not None:
                rows = {(("phase", str(i + 1)),): {"current_a": c, "voltage_ln_v": 230.0}
                        for i, c in enumerate(phases)}
            self.send(f"pdu-{rack}-{side}", "pdu", {"power_w": kw * 1000, "tripped": tripped == side}, rows)

    def cdu(self, cdu: str, **values: Value) -> None:
        base: dict[str, Value] = {"flow_lpm": 450.0, "flow_setpoint_lpm": 450.0, "heat_removed_kw": 200.0,
                                  "supply_temp_c": 32.0, "supply_temp_setpoint_c": 32.0,
                                  "return_temp_c": 42.0, "leak": False, "pump_fault": False,
                                  "reservoir_level": "ok"}
        base.update(values)
        self.send(cdu, "cdu", base)

    def healthy(self) -> None:
        """Every rack at 100 kW (liquid) / 30 kW (air), split over its feeds; loops at the right flow."""
        for rack in ("A01", "A02", "B01", "B02"):
            self.feed(rack, 50, 50)
        for rack in ("C01", "C02"):
            self.feed(rack, 15, 15)
        self.cdu("cdu-1")
        self.cdu("cdu-2")

    def step(self, seconds: float = 1.0, *, data: bool = True) -> None:
        self.clock.advance(seconds)
        if data:
            self.healthy()
        self.service.tick()

    def run(self, seconds: float, each: Any = None) -> None:
        for _ in range(int(seconds)):
            self.clock.advance(1)
            (each or self.healthy)()
            self.service.tick()

    def rack_values(self, rack: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for batch in self.published:
            if batch.kind == "rack" and batch.device == rack:
                for s in batch.samples:
                    out[s.point] = s.value
        return out


def rig_with(tmp_path: Path, rules: dict[str, Any], **kw: Any) -> Rig:
    return Rig(hall(tmp_path, rules, **kw))


