"""The rack and plant metrics of a large hall are computed in slices, the event loop free between them: at
21,500 racks computing them at once stopped the loop for 0.25-0.6 s every tick, and every poll waited."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dcim.core.samples import Batch
from tests.rules.rig import Rig

RACKS = 1_200  # above the slice of 500: three slices a pass, and the CDUs' plant metrics in slices too


def big_hall(state_dir: Path) -> dict[str, Any]:
    devices = [{"id": f"cdu-{n}", "kind": "cdu", "protocol": "modbus", "port": 15020, "unit_id": n % 200 + 1,
                "profile": "generic-cdu"} for n in range(1, RACKS + 1)]
    racks = [{"id": f"R{n}", "cooling": "liquid", "power_budget_kw": 150, "cdu": f"cdu-{n}"}
             for n in range(1, RACKS + 1)]
    return {"site": {"id": "hall-1"}, "rooms": [{"id": "dh1", "rows": [{"id": "A", "racks": racks}]}],
            "devices": devices, "state_dir": str(state_dir)}


def test_the_slices_make_the_same_batches_as_the_whole(tmp_path: Path) -> None:
    rig = Rig(big_hall(tmp_path))
    for n in range(1, RACKS + 1, 7):
        rig.cdu(f"cdu-{n}")
    metrics = rig.service.engine.metrics
    now = rig.clock.now_ns()
    batches: list[Batch] = []
    slices = sum(1 for _ in metrics.compute_steps(now, batches))
    assert slices >= 2 * 3 + 2  # two passes over the racks and the CDUs', each in slices of 500
    whole = metrics.compute(now)
    assert [(b.device, b.kind, b.samples) for b in batches] == [(b.device, b.kind, b.samples) for b in whole]
    assert {b.kind for b in whole} == {"rack", "plant"} and len(whole) == 2 * RACKS


async def test_a_tick_lets_the_loop_run_before_its_first_rack_batch(tmp_path: Path) -> None:
    rig = Rig(big_hall(tmp_path))
    turns = 0
    first_batch_at: list[int] = []

    async def other_work() -> None:  # a poll, say: counts the turns the loop gave it
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    publish = rig.service.publish
    assert publish is not None

    def recording(batch: Batch) -> None:
        if not first_batch_at:
            first_batch_at.append(turns)
        publish(batch)

    rig.service.publish = recording
    worker = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    start = turns
    try:
        await rig.service.tick_async()
    finally:
        worker.cancel()
    # Before the first batch of the tick is published, the other task ran between the slices.
    assert first_batch_at and first_batch_at[0] - start >= 6, (first_batch_at, start)
