"""Fill InfluxDB without the daemon: the plant's values, read through the real profiles, derived rack
metrics from the real rules.metrics, alarm events as dcim.core.events.AlarmEvent; all encoded by the real
dcim.core.lineproto with the real dcim.core.topology tags. What the daemon's pipeline would write for the same plant.

The scenario is not a quiet hall: it has a rack over budget, a tripped feed, a leak that fired and
resolved, and firing alarms, so the panels that show trouble have trouble to show.
"""

from __future__ import annotations

from typing import Any

from dcim.app.config import Config
from dcim.core.events import AlarmEvent, AlarmState, Severity
from dcim.core.lineproto import encode_batch
from dcim.core.samples import Batch, Sample, Value
from dcim.core.topology import Topology
from dcim.drivers.profiles import load_profile
from dcim.rules.metrics import RackMetrics, Readings
from dcim.simulators.plant import Plant

NS = 1_000_000_000


def device_batch(plant: Plant, config: Config, device_id: str, ts_ns: int) -> Batch:
    """One poll of a device as its driver would return it: every readable profile point the plant serves."""
    device = config.device(device_id)
    profile = load_profile(device.profile, config.extra_profile_dirs())
    values = plant.values(device_id)
    samples: list[Sample] = []
    for point in profile.points:
        if getattr(point, "readable", True) is False:
            continue
        measurement = profile.measurement(point)
        index_tag = getattr(point, "index_tag", None)
        static = dict(getattr(point, "tags", {}) or {})
        if index_tag:
            for index, row in sorted(plant.rows(device_id, index_tag).items()):
                if point.name in row:
                    samples.append(Sample(device_id, point.name, row[point.name], ts_ns,
                                          measurement=measurement, tags=((index_tag, str(index)),)))
            continue
        value: Value | None
        if static:
            # A scalar sensor that is its own object (Raritan's probe): its row in the plant's table.
            (tag, index), = static.items()
            value = plant.rows(device_id, tag).get(int(index), {}).get(point.name)
        else:
            value = values.get(point.name)
        if value is not None:
            samples.append(Sample(device_id, point.name, value, ts_ns, measurement=measurement,
                                  tags=tuple(sorted(static.items()))))
    return Batch(device_id, device.kind, ts_ns, samples)


def alarm_lines(event: AlarmEvent, topology: Topology) -> list[str]:
    """The `alarm` line of one event, as rules.service publishes it: a batch of the subject, its samples
    tagged rule and severity, fields state, value, threshold, message; the subject's topology tags."""
    tags = tuple(sorted({"rule": event.rule, "severity": event.severity.value}.items()))
    fields: list[tuple[str, Value | None]] = [("state", event.state.value), ("value", event.value),
                                              ("threshold", event.threshold), ("message", event.message),
                                              ("acknowledged", event.acknowledged),
                                              ("ack_by", "alice" if event.acknowledged else "")]
    samples = [Sample(event.subject, name, value, event.ts_ns, measurement="alarm", tags=tags)
               for name, value in fields if value is not None]
    return encode_batch(Batch(event.subject, "alarm", event.ts_ns, samples), topology.tags(event.subject))


def scenario(plant: Plant) -> None:
    """Trouble to show: B01 over budget, B02's feed A tripped (no redundancy); events() adds a leak on cdu-1
    and a low COP on chiller-1 that fired and resolved (B02's redundancy alarm is acknowledged), and
    synthetic_lines() takes cdu-2 offline at the end."""
    plant.racks["B01"].extra_kw = 20.0
    plant.inject("pdu-b02a", "feed_trip")


def events(topology: Topology, start_ns: int, end_ns: int) -> list[AlarmEvent]:
    def labels(subject: str) -> dict[str, str]:
        return dict(topology.tags(subject))

    mid = (start_ns + end_ns) // 2
    out = []
    for state, ts in ((AlarmState.PENDING, start_ns + 10 * NS), (AlarmState.FIRING, start_ns + 40 * NS)):
        out.append(AlarmEvent("air-rack-power-budget/B01", "air-rack-power-budget", "B01", state,
                              Severity.CRITICAL, ts, "B01 power 105 % of budget (critical 100 %)",
                              "utilization_pct", 105.0, 100.0, labels("B01")))
    out.append(AlarmEvent("air-rack-redundancy/B02", "air-rack-redundancy", "B02", AlarmState.FIRING,
                          Severity.CRITICAL, start_ns + 20 * NS, "B02 redundant headroom -30 kW",
                          "redundant_headroom_kw", -30.0, 0.0, labels("B02"), acknowledged=True))
    for state, ts in ((AlarmState.FIRING, mid), (AlarmState.RESOLVED, end_ns - 20 * NS)):
        out.append(AlarmEvent("cdu-leak/cdu-1", "cdu-leak", "cdu-1", state, Severity.CRITICAL, ts,
                              "cdu-1 leak zone 1", "leak", None, None, labels("cdu-1")))
    for state, ts in ((AlarmState.FIRING, start_ns + 30 * NS), (AlarmState.RESOLVED, mid)):
        out.append(AlarmEvent("chiller-cop/chiller-1", "chiller-cop", "chiller-1", state, Severity.WARNING, ts,
                              "chiller-1 COP 3.8 (warning below 4)", "cop", 3.8, 4.0, labels("chiller-1")))
    out.append(AlarmEvent("liquid-rack-heat-capture/A01", "liquid-rack-heat-capture", "A01", AlarmState.FIRING,
                          Severity.WARNING, mid, "A01 heat to liquid 55 % (warning below 60 %)",
                          "heat_ratio_pct", 55.0, 60.0, labels("A01")))
    return out


def synthetic_lines(config: Config, end_ns: int, *, steps: int = 30, step_s: float = 10.0) -> list[str]:
    plant = Plant(config, seed=7)
    scenario(plant)
    topology = Topology(config)
    readings = Readings(stale_after_ns=int(5 * step_s * NS))
    metrics = RackMetrics(topology, readings)
    start_ns = end_ns - int(steps * step_s * NS)
    lines: list[str] = []
    for i in range(steps + 1):
        ts = start_ns + int(i * step_s * NS)
        leak = i == steps // 2
        if leak:
            plant.inject("cdu-1", "leak", zone=1)
        elif i == steps // 2 + 3:
            plant.clear("cdu-1", "leak")
        plant.advance(step_s)
        for device in config.devices:
            batch = device_batch(plant, config, device.id, ts)
            readings.update(batch)
            lines += encode_batch(batch, topology.tags(device.id))
        for batch in metrics.compute(ts):
            lines += encode_batch(batch, topology.tags(batch.device))
    for event in events(topology, start_ns, end_ns):
        lines += alarm_lines(event, topology)
    for device in config.devices:
        lines += device_status_lines(device.id, device.kind, topology, start_ns)
    lines += device_status_lines("cdu-2", "cdu", topology, end_ns - 30 * NS, online=False,
                                 error="no answer within the poll deadline")
    return lines


def device_status_lines(device: str, kind: str, topology: Topology, ts_ns: int, online: bool = True,
                        error: str = "") -> list[str]:
    """A `device_status` line as dcim.app.publisher writes it on a change of the device's availability."""
    tags = (("kind", kind),)
    batch = Batch(device, "device_status", ts_ns, [Sample(device, "online", online, ts_ns, tags=tags),
                                                   Sample(device, "error", error, ts_ns, tags=tags)])
    return encode_batch(batch, topology.tags(device))


def counts(lines: list[str]) -> dict[str, Any]:
    out: dict[str, int] = {}
    for line in lines:
        measurement = line.split(",", 1)[0]
        out[measurement] = out.get(measurement, 0) + 1
    return out
