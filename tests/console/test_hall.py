"""How the hall judges a rack: alarms on the rack, its feed PDUs or its CDU loop colour it (critical over
warning over utilization bands); other racks' alarms do not; no power reading is `unknown`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dcim.app.config import load_config
from dcim.app.console.live import LiveState, judge
from dcim.core.samples import Batch, Quality, Sample
from dcim.core.topology import Topology
from tests.console.rig import hall


@dataclass
class Alarm:
    key: str
    subject: str
    severity: str
    labels: dict[str, str] = field(default_factory=dict)
    suppressed: str = ""


def rack_batch(rack: str, power_kw: float | None, utilization: float | None) -> Batch:
    samples = [Sample(rack, "power_kw", power_kw, 1, Quality.GOOD if power_kw is not None else Quality.BAD,
                      measurement="rack"),
               Sample(rack, "utilization_pct", utilization, 1, measurement="rack")]
    return Batch(rack, "rack", 1, samples)


def test_alarms_on_the_rack_its_feeds_or_its_loop_colour_it(tmp_path: Path) -> None:
    topology = Topology(load_config(hall(tmp_path)))
    live = LiveState()
    live.on_batch(rack_batch("A01", 120.0, 80.0))
    live.on_batch(rack_batch("A02", 30.0, 20.0))
    live.on_batch(rack_batch("B01", 39.0, 97.5))
    racks = {r.id: r for r in judge(topology, live, [])}
    assert {r: v.status for r, v in racks.items()} == {"A01": "ok", "A02": "ok", "B01": "ok", "B02": "unknown"}
    assert {r: v.band for r, v in racks.items()} == {"A01": "u2", "A02": "u0", "B01": "u3", "B02": "unk"}
    assert (racks["A01"].coolant, racks["B01"].coolant) == ("ok", "none")

    alarms = [Alarm("cdu-flow-low/cdu-1", "cdu-1", "warning", suppressed="shelved"),
              Alarm("pdu-overload/pdu-2", "pdu-2", "critical")]
    racks = {r.id: r for r in judge(topology, live, alarms)}
    # The CDU's warning on both racks of its loop (suppressed: still firing, still shown); pdu-2 feeds B01.
    assert {r: v.status for r, v in racks.items()} == {"A01": "warning", "A02": "warning", "B01": "critical",
                                                       "B02": "unknown"}
    assert (racks["A01"].coolant, racks["A01"].suppressed) == ("warning", 1)
    assert racks["B01"].css() == "rack s-critical u3 c-none"

    alarms.append(Alarm("liquid-rack-power-budget/A01", "A01", "critical"))
    racks = {r.id: r for r in judge(topology, live, alarms)}
    assert (racks["A01"].status, racks["A01"].coolant, racks["A02"].status) == ("critical", "warning", "warning")


def test_alarm_batches_wake_the_console_but_are_not_readings() -> None:
    live = LiveState()
    woken: list[int] = []
    live.on_change.append(lambda: woken.append(1))
    live.on_batch(Batch("cdu-1", "alarm", 1, [Sample("cdu-1", "state", "firing", 1, measurement="alarm")]))
    assert woken == [1] and live.devices == {}
