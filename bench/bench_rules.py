"""Rule engine benchmark: evaluations per second with the default packs on a large hall, and the time from
a sample entering the pipeline to the notifier's `submit` (p50 / p99).

    .venv/bin/python bench/bench_rules.py [--quick] [--racks N]

The clock is a FakeClock advanced one second per round (so pending periods and timers run as in
production), while wall time is measured with perf_counter. The notifier is a recorder that timestamps
`submit`: what happens after submit (routing, hooks) is the notification benchmark's part.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcim.app.config import Config
from dcim.core.events import AlarmEvent, AlarmState
from dcim.core.pipeline import Pipeline
from dcim.core.samples import Batch, Sample, Value
from dcim.core.topology import Topology
from dcim.rules.clock import FakeClock
from dcim.rules.service import RuleService


def hall(racks: int, state_dir: str) -> dict[str, Any]:
    per_loop = 10
    loops = max(1, racks // per_loop)
    devices: list[dict[str, Any]] = []
    rows = []
    for loop in range(loops):
        cdu = f"cdu-{loop}"
        devices.append({"id": cdu, "kind": "cdu", "protocol": "modbus", "port": 15000, "profile": "generic-cdu"})
        rack_list = []
        for i in range(per_loop):
            rack = f"R{loop:03d}-{i:02d}"
            feeds = {}
            for side in "ab":
                pdu = f"pdu-{rack}-{side}"
                devices.append({"id": pdu, "kind": "pdu", "protocol": "snmp", "port": 16100,
                                "profile": "apc-rpdu2"})
                feeds[side] = {"pdu": pdu, "breaker_a": 250}
            rack_list.append({"id": rack, "cooling": "liquid", "power_budget_kw": 150, "cdu": cdu, "feeds": feeds})
        rows.append({"id": f"row{loop}", "racks": rack_list})
    return {"site": {"id": "bench"}, "rooms": [{"id": "dh1", "rows": rows}], "devices": devices,
            "state_dir": state_dir}


class Recorder:
    def __init__(self) -> None:
        self.at: dict[str, int] = {}

    def submit(self, event: AlarmEvent) -> None:
        if event.state is AlarmState.FIRING:
            self.at[event.key] = time.perf_counter_ns()


def batch(device: str, kind: str, now: int, values: dict[str, Value],
          phases: list[float] | None = None) -> Batch:
    samples = [Sample(device, k, v, now, measurement=kind) for k, v in values.items()]
    for i, current in enumerate(phases or []):
        samples.append(Sample(device, "current_a", current, now, measurement=kind, tags=(("phase", str(i + 1)),)))
    return Batch(device, kind, now, samples)


def cdu_values(leak: bool = False) -> dict[str, Value]:
    return {"flow_lpm": 1600.0, "flow_setpoint_lpm": 1600.0, "heat_removed_kw": 900.0, "supply_temp_c": 32.0,
            "supply_temp_setpoint_c": 32.0, "return_temp_c": 42.0, "leak": leak, "pump_fault": False,
            "reservoir_level": "ok"}


async def run(racks: int, rounds: int, samples: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Config.model_validate(hall(racks, tmp))
        topology = Topology(config)
        clock = FakeClock()
        pipeline = Pipeline()
        notifier = Recorder()
        service = RuleService(config, topology, publish=pipeline.publish, notifier=notifier, clock=clock)
        pipeline.add_sink(service.sink)
        pdus = [d for d, k in topology.kinds.items() if k == "pdu"]
        cdus = [d for d, k in topology.kinds.items() if k == "cdu"]
        bound = len(service.engine.bound) + len(service.engine.nodata)

        # 1. Throughput: every device reports once per (simulated) second, then the tick.
        evaluations0 = service.engine.evaluations
        started = time.perf_counter()
        for _ in range(rounds):
            clock.advance(1)
            now = clock.now_ns()
            for pdu in pdus:
                pipeline.publish(batch(pdu, "pdu", now, {"power_w": 50_000.0, "tripped": False},
                                       [73.0, 72.0, 72.5]))
            for cdu in cdus:
                pipeline.publish(batch(cdu, "cdu", now, cdu_values()))
            service.tick()
            service.store.flush()
        elapsed = time.perf_counter() - started
        evaluations = service.engine.evaluations - evaluations0
        print(f"hall: {racks} racks, {len(pdus)} PDUs, {len(cdus)} CDUs; {bound} bound rules (default packs)")
        print(f"throughput: {rounds} rounds in {elapsed:.2f} s = {rounds / elapsed:.1f} rounds/s; "
              f"{evaluations / elapsed:,.0f} rule evaluations/s; "
              f"{rounds * (len(pdus) + len(cdus)) / elapsed:,.0f} device batches/s incl. rack metrics")
        tick = []
        for _ in range(max(3, rounds // 5)):
            clock.advance(1)
            t0 = time.perf_counter()
            service.tick()
            tick.append(time.perf_counter() - t0)
        print(f"tick (rack metrics + all timers, no new data): median {statistics.median(tick) * 1000:.1f} ms")

        # 2. Latency, sample -> notifier.submit: a leak reported by one CDU (judged within its batch).
        latencies: list[float] = []
        for i in range(samples):
            cdu = cdus[i % len(cdus)]
            clock.advance(1)
            t0 = time.perf_counter_ns()
            pipeline.publish(batch(cdu, "cdu", clock.now_ns(), cdu_values(leak=True)))
            t1 = notifier.at.pop(f"cdu-leak/{cdu}")
            latencies.append((t1 - t0) / 1000)
            clock.advance(1)
            pipeline.publish(batch(cdu, "cdu", clock.now_ns(), cdu_values(leak=False)))
            if i % 100 == 0:
                service.store.flush()
        latencies.sort()
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"sample -> submit (device rule, {samples} alarms): p50 {p50:.0f} us, p99 {p99:.0f} us")
        print("rack rules add the wait for the next tick (rules.tick, 1 s by default) plus one tick above")
        service.store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--racks", type=int, default=None)
    args = parser.parse_args()
    # One log line per alarm is right for a daemon, noise for a benchmark.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    racks = args.racks or (100 if args.quick else 500)
    asyncio.run(run(racks, rounds=10 if args.quick else 30, samples=200 if args.quick else 2000))


if __name__ == "__main__":
    main()
