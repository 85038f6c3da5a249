"""A reload binds the new rules between the event loop's turns and leaves the same engine as binding them in
one piece; the running engine judges until the new one takes over."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dcim.core.topology import Topology
from dcim.rules.evaluate import Engine
from tests.rules.rig import Rig, hall, make_config
from tests.rules.test_lifecycle import leak


def shape(engine: Engine) -> tuple[object, ...]:
    return (
        [(b.key, b.subject, b.labels) for b in engine.bound],
        {s: {p: [b.key for b in bs] for p, bs in points.items()} for s, points in engine.by_point.items()},
        [(n.key, n.subject) for n in engine.nodata],
        engine.watched,
        set(engine.readings.offline),
    )


def test_binding_in_steps_binds_what_binding_at_once_does(tmp_path: Path) -> None:
    r = Rig(hall(tmp_path))
    r.status("cdu-2", False, "no route")  # a firing comm alarm in the store: offline in the new engine too
    for _ in range(120):
        r.clock.advance(1)
        r.service.tick()
    assert any(a.subject == "cdu-2" for a in r.service.store.active())
    service = r.service
    config = service.config
    whole = Engine(config, r.topology, service.store, r.clock, service._on_event)
    stepped = Engine(config, r.topology, service.store, r.clock, service._on_event, bind=False)
    assert not stepped.bound
    pauses = sum(1 for _ in stepped.binding(step=7))
    assert len(whole.bound) > 40 and pauses == len(whole.bound) // 7
    assert shape(stepped) == shape(whole)
    assert "cdu-2" in stepped.readings.offline
    service.store.close()


async def test_reload_async_lets_the_loop_run_and_keeps_alarm_state(tmp_path: Path) -> None:
    r = Rig(hall(tmp_path))
    leak(r)
    assert r.notifier.fired() == ["cdu-leak/cdu-1"]
    old = r.service.engine
    raw = hall(tmp_path)
    raw["rooms"][0]["rows"][0]["racks"][0]["power_budget_kw"] = 120
    config = make_config(raw)

    turns: list[bool] = []  # for each turn another task got during the reload: was the old engine still on?

    async def beside() -> None:
        while True:
            turns.append(r.service.engine is old)
            await asyncio.sleep(0)

    other = asyncio.create_task(beside())
    await asyncio.sleep(0)
    turns.clear()
    await r.service.reload_async(config, Topology(config), step=5)
    other.cancel()
    assert len(turns) >= len(r.service.engine.bound) // 5 - 1 and all(turns), "the old engine ran meanwhile"
    assert r.service.engine is not old and r.service.topology.racks["A01"].rack.power_budget_kw == 120
    notified = len(r.notifier.events)
    leak(r)
    [active] = r.service.store.active()
    assert active.key == "cdu-leak/cdu-1" and len(r.notifier.events) == notified, "still firing, not paged again"
    r.service.store.close()


def test_a_threshold_parsed_once_is_the_same_and_a_flag_is_still_refused() -> None:
    """The parsed thresholds are kept (each rule's are parsed again for each subject it is bound to): the
    same spec gives the same frozen Threshold; 1, 1.0 and True are kept apart, and True is still no number."""
    import pytest

    from dcim.rules.model import parse_threshold

    assert parse_threshold("80% of power_budget_kw") is parse_threshold("80% of power_budget_kw")
    assert parse_threshold(1).offset == 1.0 and parse_threshold(1.0).offset == 1.0
    for _ in range(2):
        with pytest.raises(ValueError, match="a number or an expression"):
            parse_threshold(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="use a number"):
        parse_threshold("5 kW")
