"""Modbus driver throughput: N simulated CDUs (generic-cdu, one TCP port each) polled at a 1 s interval.

The driver runs here, directly (no poller, MQTT or database); the simulators run in a child process so
their CPU is not counted. For each N it prints polls per second, points per second, the driver process'
CPU seconds per 1,000 points (time.process_time), poll latency, failed polls and resident memory.

    python bench/bench_modbus.py                 # N = 10, 100, 500; 20 s measured each
    python bench/bench_modbus.py --quick         # N = 10, 100; 5 s each
    python bench/bench_modbus.py --sizes 50 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import statistics
import sys
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import free_ports, machine, rss_mib  # noqa: E402

from dcim.app.config import parse_config  # noqa: E402
from dcim.drivers.base import DriverContext  # noqa: E402
from dcim.drivers.errors import DriverError  # noqa: E402
from dcim.drivers.modbus.config import ModbusDevice  # noqa: E402
from dcim.drivers.modbus.driver import ModbusDriver, make_driver  # noqa: E402
from dcim.drivers.profiles import load_profile  # noqa: E402


def config_raw(n: int) -> dict[str, Any]:
    devices = [{"id": f"cdu-{i}", "kind": "cdu", "protocol": "modbus", "host": "127.0.0.1", "port": port,
                "profile": "generic-cdu", "interval": "1s", "timeout": "800ms", "retries": 0, "simulate": True}
               for i, port in enumerate(free_ports(n), start=1)]
    racks = [{"id": f"R{i}", "cooling": "liquid", "power_budget_kw": 150, "cdu": f"cdu-{i}"}
             for i in range(1, n + 1)]
    return {"site": {"id": "bench"}, "rooms": [{"id": "dh1", "rows": [{"id": "A", "racks": racks}]}],
            "devices": devices}


def run_simulators(raw: dict[str, Any], ready: EventType) -> None:
    import logging

    import structlog

    from dcim.simulators.modbus import ModbusSimulator
    from dcim.simulators.plant import Plant

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def main() -> None:
        config = parse_config(raw)
        plant = Plant(config)
        simulator = ModbusSimulator(plant, [d for d in config.devices if isinstance(d, ModbusDevice)])
        await simulator.start()
        ready.set()
        loop = asyncio.get_running_loop()
        last = loop.time()
        try:
            while True:
                await asyncio.sleep(0.25)
                plant.advance(loop.time() - last)
                last = loop.time()
        finally:
            await simulator.stop()

    asyncio.run(main())



class Stats:
    def __init__(self) -> None:
        self.polls = 0
        self.points = 0
        self.failed = 0
        self.latencies: list[float] = []
        self.counting = False


async def poll_forever(driver: ModbusDriver, interval: float, stats: Stats, offset: float) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(offset)  # spread the devices over the interval, as a daemon's start-up would
    next_tick = loop.time()
    while True:
        started = loop.time()
        try:
            samples = await driver.read()
        except DriverError:
            if stats.counting:
                stats.failed += 1
        else:
            if stats.counting:
                stats.polls += 1
                stats.points += len(samples)
                stats.latencies.append(loop.time() - started)
        next_tick += interval
        await asyncio.sleep(max(0.0, next_tick - loop.time()))


async def measure(n: int, seconds: float, warmup: float) -> dict[str, float]:
    raw = config_raw(n)
    ready = multiprocessing.get_context("spawn").Event()
    child = multiprocessing.get_context("spawn").Process(target=run_simulators, args=(raw, ready), daemon=True)
    child.start()
    try:
        if not await asyncio.to_thread(ready.wait, 60):
            raise RuntimeError("simulators did not start")
        config = parse_config(raw)
        context = DriverContext()
        profile = load_profile("generic-cdu")
        drivers = [make_driver(d, profile, context) for d in config.devices]
        stats = Stats()
        tasks = [asyncio.create_task(poll_forever(d, 1.0, stats, i / n)) for i, d in enumerate(drivers)]
        await asyncio.sleep(warmup)
        stats.counting = True
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        stats.counting = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        memory = rss_mib()
        for driver in drivers:
            await driver.close()
    finally:
        child.terminate()
        child.join(10)
    lat = sorted(stats.latencies) or [0.0]
    return {
        "n": n, "polls_per_s": stats.polls / wall, "points_per_s": stats.points / wall,
        "cpu_s_per_1000_points": 1000 * cpu / max(stats.points, 1), "cpu_pct": 100 * cpu / wall,
        "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
        "failed": stats.failed, "rss_mib": memory,
    }



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 10, 100; 5 s each")
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args()
    sizes = args.sizes or ([10, 100] if args.quick else [10, 100, 500])
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    print(f"machine: {machine()}")
    print(f"generic-cdu: {len(load_profile('generic-cdu').points)} points, 3 requests a poll; 1 s interval; "
          f"{seconds:g} s measured after a warm-up")
    header = (f"{'N':>5} {'polls/s':>9} {'points/s':>10} {'CPU s/1k pts':>13} {'CPU %':>7} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'failed':>7} {'RSS MiB':>8}")
    print(header)
    for n in sizes:
        r = asyncio.run(measure(n, seconds, warmup=3.0))
        print(f"{r['n']:>5.0f} {r['polls_per_s']:>9.1f} {r['points_per_s']:>10.0f} "
              f"{r['cpu_s_per_1000_points']:>13.4f} {r['cpu_pct']:>7.1f} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['failed']:>7.0f} {r['rss_mib']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
