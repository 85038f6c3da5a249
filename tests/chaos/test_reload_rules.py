"""A configuration reload rebuilds the rules on the same alarm store: alarm state carries over."""

from __future__ import annotations

from pathlib import Path

from dcim.core.topology import Topology
from tests.rules.rig import Rig, hall, make_config
from tests.rules.test_lifecycle import leak


async def test_rules_reload_keeps_a_firing_acknowledged_alarm(tmp_path: Path) -> None:
    r = Rig(hall(tmp_path))
    leak(r)
    assert r.notifier.fired() == ["cdu-leak/cdu-1"]
    r.service.store.acknowledge("cdu-leak/cdu-1", "alice", "on it")
    outlet, notified = len(r.outlet.events), len(r.notifier.events)

    # A new configuration: one rack's budget changed, the rest as before.
    raw = hall(tmp_path)
    raw["rooms"][0]["rows"][0]["racks"][0]["power_budget_kw"] = 120
    config = make_config(raw)
    r.service.reload(config, Topology(config))
    assert r.service.topology.racks["A01"].rack.power_budget_kw == 120

    leak(r)
    leak(r)
    # Still firing, still acknowledged, and nobody paged again.
    [active] = r.service.store.active()
    assert active.key == "cdu-leak/cdu-1" and active.acknowledged and active.ack_by == "alice"
    assert len(r.notifier.events) == notified and len(r.outlet.events) == outlet
    leak(r, wet=False)
    assert r.notifier.resolved() == ["cdu-leak/cdu-1"]
    r.service.store.close()
