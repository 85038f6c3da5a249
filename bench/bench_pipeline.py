"""The daemon's pipeline in one process, without sockets: what a poll's batch costs after the driver, and what
the rules tick costs, per point.

The daemon is built from bench_saturation.py's configuration (`config_for`: N generic-cdu CDUs, one liquid rack on
each, MQTT and the in-process ingest configured, HTTP console on) and its journal opened, but nothing is
started: no device is polled and nothing is sent. Each round then hands every device's coordinator one
batch of the generic-cdu profile's 24 points with typical values (the floats move a little each round)
as a poll would (`_emit_batch`: the rules, the publisher's encoding and journal row, the live view), and
runs the rules tick once (rack and plant metrics, published through the same sinks, and the timers).
Printed: process CPU per point for the batches and for the tick. The journal's writer thread runs as in the
daemon and is counted. Nothing drains the journal, so backpressure is switched off here (it would defer
the derived metrics, as a congested daemon does).

Like `dcim run`, a tree with `dcim/core/collector.py` settles the garbage collector after start-up
(`--no-settle`: it does not, to tell what that is worth).

    python bench/bench_pipeline.py                      # 1,000 CDUs, 20 rounds
    python bench/bench_pipeline.py --devices 4000 --rounds 10
    python bench/bench_pipeline.py --tree ../before     # another source tree (before/after)
    python bench/bench_pipeline.py --profile tick       # cProfile of the tick (or: batches)
    taskset -c 0 python bench/bench_pipeline.py         # on one core, the journal's writer thread beside it
    python bench/bench_pipeline.py --count --tree ../before   # instructions a point, counted (valgrind)

`--count` counts the instructions the event loop's thread executes per point instead of timing it: the
measurement runs under valgrind's callgrind, which counts only inside the measured rounds (each round is
called from within the C library's `qsort`, whose calls callgrind is told to count; the start-up runs
uninstrumented). The count is the same from run to run within a few hundredths of a percent, whatever else
the machine runs, where the CPU time of the same build varies by a third on a shared virtual machine; it
tells two builds apart by changes far below that noise. It leaves out the journal's writer thread and
counts instructions, not their cost (a cache miss counts as one), so it ranks Python work, not syscalls.
Needs valgrind (Debian: `apt-get install valgrind`); about 20 s a measurement at the default 100 CDUs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import ctypes
import logging
import os
import pstats
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROFILE = "generic-cdu"
# The profile's points, each with a typical value of a CDU in service (the floats move a little every round).
# The figures in BENCHMARKS.md were measured with these values; `run` checks that the profile still has
# exactly these points.
POINTS: list[tuple[str, float | int | bool | str]] = [
    ("facility_supply_temp_c", 18.2), ("facility_return_temp_c", 27.9), ("supply_temp_c", 30.1),
    ("return_temp_c", 39.8), ("flow_lpm", 1602.5), ("supply_pressure_kpa", 250.1), ("return_pressure_kpa", 180.2),
    ("diff_pressure_kpa", 70.0), ("pump1_speed_pct", 62.1), ("pump2_speed_pct", 61.9), ("valve_pct", 45.5),
    ("heat_removed_kw", 121.4), ("power_w", 3100), ("reservoir_level", "ok"), ("pump1_running", True),
    ("pump2_running", True), ("pump_fault", False), ("leak_zone1", False), ("leak_zone2", False),
    ("leak_zone3", False), ("leak_zone4", False), ("leak", False), ("supply_temp_setpoint_c", 30.0),
    ("flow_setpoint_lpm", 1600)]


def _counted(work: Callable[[], None]) -> None:
    """Call `work` from within libc's qsort (a two-element sort whose comparison runs it once): callgrind,
    told to count inside qsort only, counts what `work` executes and nothing else."""
    failed: list[BaseException] = []

    def compare(a: int | None, b: int | None) -> int:
        try:
            work()
        except BaseException as err:  # raised again below, outside the C frame
            failed.append(err)
        return 0

    callback = _COMPARE(compare)
    pair = (ctypes.c_int * 2)(1, 2)
    _LIBC.qsort(pair, 2, ctypes.sizeof(ctypes.c_int), callback)
    if failed:
        raise failed[0]


_LIBC = ctypes.CDLL(None)
_COMPARE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
# glibc's qsort hands over to qsort_r (__qsort_r inside), which calls the comparison: counted only there.
_COUNTED = ("qsort_r", "__qsort_r")


async def run(path: Path, rounds: int, profile: str | None, settle_gc: bool = True, count: str | None = None) -> None:
    """One measurement, in this process, of the configuration at `path` (written by bench_saturation.py's
    `config_for`), with dcim imported from whatever tree PYTHONPATH names. `count` ("batches" or "tick"):
    under callgrind, instrument from here on and count only that part of each round."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from dcim.app.config import load_config
    from dcim.app.daemon import Daemon
    from dcim.core.samples import Batch, Sample
    from dcim.drivers.profiles import load_profile

    config = load_config(path)
    n = len(config.devices)
    points = POINTS
    names = [p.name for p in load_profile(PROFILE).points]
    if names != [name for name, _ in points]:
        raise SystemExit(f"{PROFILE}'s points are not the bench's any more: {names}")
    daemon = Daemon(config)
    for box in daemon.outboxes:
        await box.open()
    tasks = [asyncio.create_task(box.run()) for box in daemon.outboxes]
    daemon.pipeline.admission.congested = lambda: False  # type: ignore[method-assign]
    coordinators = list(daemon.coordinators.values())
    rules = daemon.rules
    assert rules is not None

    random.seed(1)  # the same values for every tree (and every run of --count)

    def batches() -> None:
        ts = time.time_ns()
        for c in coordinators:
            device = c.device.id
            samples = [Sample(device, point, value + random.random() / 10 if type(value) is float else value,
                              ts, measurement="cdu") for point, value in points]
            c._emit_batch(Batch(device, "cdu", ts, samples))

    batches()  # the first round binds and caches: not measured
    await rules.tick_async()
    try:
        from dcim.core.collector import settle
    except ImportError:
        pass  # a tree from before the collector was settled: Python's defaults, as its daemon had
    else:
        if settle_gc:
            settle()
    if count is not None:
        await counted_rounds(rules, batches, rounds, count, n * len(points))
        await stop(daemon, tasks)
        return
    spy = cProfile.Profile() if profile else None
    spent = {"batches": 0.0, "tick": 0.0}
    for _ in range(rounds):
        if spy is not None and profile == "batches":
            spy.enable()
        t0 = time.process_time()
        batches()
        t1 = time.process_time()
        if spy is not None:
            spy.disable() if profile == "batches" else spy.enable()
        await rules.tick_async()
        t2 = time.process_time()
        if spy is not None:
            spy.disable()
        spent["batches"] += t1 - t0
        spent["tick"] += t2 - t1
        await asyncio.sleep(0.05)  # the journal's writer takes the round's rows
    total = n * len(points) * rounds
    print(f"{n:>6} {rounds:>6} {spent['batches'] / total * 1e6:>12.2f} {spent['tick'] / total * 1e6:>9.2f} "
          f"{(spent['batches'] + spent['tick']) / total * 1e6:>9.2f} {spent['tick'] / rounds * 1000:>12.1f}",
          flush=True)
    await stop(daemon, tasks)
    if spy is not None:
        pstats.Stats(spy).sort_stats("tottime").print_stats(30)


async def counted_rounds(rules: Any, batches: Callable[[], None], rounds: int, part: str, points: int) -> None:
    """`rounds` rounds as `run` makes them, under callgrind, counting only `part` of each. The tick runs here
    as `RulesService.tick_async` runs it, without its yields to the event loop (a callgrind region is one
    call): rack and plant metrics published, then every timer."""
    def tick() -> None:
        started = rules.clock.now_ns()
        for batch in rules.engine.rack_batches():
            if rules.publish is not None:
                rules.publish(batch)
            else:
                rules.engine.on_batch(batch)
        for _ in rules.engine.tick_steps(started):
            pass

    # Instrumentation on from here: the start-up above ran at valgrind's uninstrumented speed.
    from benchlib import callgrind_instrument

    await callgrind_instrument("on")
    for _ in range(rounds):
        if part == "batches":
            _counted(batches)
        else:
            batches()
        if part == "tick":
            _counted(tick)
        else:
            await rules.tick_async()
        await asyncio.sleep(0.02)  # the journal's writer takes the round's rows
    print(f"counted {points * rounds} points", flush=True)


async def stop(daemon: Any, tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for box in daemon.outboxes:
        await box.close()
    await daemon.writer.close()
    daemon.claim.release()


def count_instructions(tree: Path, path: Path, rounds: int, part: str, env: dict[str, str]) -> tuple[int, int]:
    """(instructions counted, points) of one `--count` measurement of `part`, in a process under callgrind."""
    from benchlib import callgrind_run

    instructions, out = callgrind_run(
        [sys.executable, str(Path(__file__).resolve()), "--config", str(path), "--rounds", str(rounds),
         "--count-part", part], env, toggle=_COUNTED, cwd=tree)
    points = re.search(r"counted (\d+) points", out)
    if points is None:
        raise SystemExit(f"no count of points from the measurement:\n{out}")
    return instructions, int(points.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="*", default=[1000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 rounds (make bench BENCH_ARGS=--quick)")
    parser.add_argument("--tree", type=Path, help="import dcim from this source tree")
    parser.add_argument("--profile", choices=("batches", "tick"))
    parser.add_argument("--no-settle", action="store_true",
                        help="leave the garbage collector as Python sets it (what the GC change is worth)")
    parser.add_argument("--count", action="store_true",
                        help="count instructions a point under valgrind (steady on a noisy machine); "
                             "default 100 CDUs, 3 rounds")
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)  # one measurement, in this process
    parser.add_argument("--count-part", choices=("batches", "tick"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rounds = 5
    if args.config is not None:
        asyncio.run(run(args.config, args.rounds, args.profile, settle_gc=not args.no_settle,
                        count=args.count_part))
        return
    if args.count:
        if args.devices == [1000]:
            args.devices = [100]
        if args.rounds == 20:
            args.rounds = 3
    sys.path.insert(0, str(REPO / "bench"))
    from bench_saturation import config_for
    from benchlib import machine

    tree = (args.tree or REPO).resolve()
    print(f"machine: {machine()}; tree: {tree}")
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if args.count:
        print(f"{'N':>6} {'rounds':>6} {'batch instr/pt':>15} {'tick instr/pt':>14} {'total':>9}")
        for n in args.devices:
            with tempfile.TemporaryDirectory() as tmp:
                path = config_for(n, 1.0, Path(tmp), mqtt_port=1, http_port=0, influx_url="http://127.0.0.1:1")
                counts = {part: count_instructions(tree, path, args.rounds, part, env) for part in ("batches", "tick")}
            per = {part: instructions / points for part, (instructions, points) in counts.items()}
            print(f"{n:>6} {args.rounds:>6} {per['batches']:>15,.0f} {per['tick']:>14,.0f} "
                  f"{per['batches'] + per['tick']:>9,.0f}", flush=True)
        return
    print(f"{'N':>6} {'rounds':>6} {'batch us/pt':>12} {'tick us/pt':>9} {'total':>9} {'tick ms/round':>12}")
    extra = (["--profile", args.profile] if args.profile else []) + (["--no-settle"] if args.no_settle else [])
    for n in args.devices:
        with tempfile.TemporaryDirectory() as tmp:
            # The saturation bench's hall; nothing listens on its MQTT and InfluxDB ports (nothing is sent).
            path = config_for(n, 1.0, Path(tmp), mqtt_port=1, http_port=0, influx_url="http://127.0.0.1:1")
            # A process per size (and per tree): nothing cached from the one before.
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--config", str(path),
                            "--rounds", str(args.rounds), *extra], env=env, cwd=tree, check=True)


if __name__ == "__main__":
    main()
