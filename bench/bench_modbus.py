"""Modbus driver throughput: N simulated CDUs (generic-cdu, one TCP port each) polled at a 1 s interval.

The driver runs here, directly (no poller, MQTT or database); the simulators run in a child process so
their CPU is not counted. For each N it prints polls per second, points per second, the driver process'
CPU seconds per 1,000 points (time.process_time), poll latency, failed polls and resident memory.

    python bench/bench_modbus.py                 # N = 10, 100, 500; 20 s measured each
    python bench/bench_modbus.py --quick         # N = 10, 100; 5 s each
    python bench/bench_modbus.py --sizes 50 --seconds 10

The driver's CPU per poll (and per point), the figure the hot path is judged by, is best measured against
the lean responder, which answers each request from registers encoded once (as bench_saturation's does), so
the machine's other core is not taken by pymodbus' server; `--max-in-flight` sets the devices' option, and
`--tree` runs the driver from another source tree (a `git worktree` of an older commit) with the same bench:

    python bench/bench_modbus.py --responder lean --sizes 1000 --seconds 20 --max-in-flight 3
    python bench/bench_modbus.py --responder lean --sizes 1000 --tree /tmp/base

`--count` counts instead of timing: the instructions the driver's process executes per poll, under valgrind's
callgrind, polling N devices of the lean responder one poll at a time, R rounds (the requests, the event
loop's wake-ups, the answers, the decode into samples; not the kernel's part of a syscall). Start-up and
connecting run uninstrumented. Run to run the figure moves by a few tenths of a percent, where CPU time on
a shared virtual machine moves by a third. Needs valgrind (Debian: `apt-get install valgrind`):

    python bench/bench_modbus.py --count                          # 50 devices, 4 rounds
    python bench/bench_modbus.py --count --tree /tmp/base
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import re
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# --tree: the driver (and everything of dcim) imported from another source tree, put first on the path before
# anything of dcim is imported (the simulators' child process, spawned, re-reads the same arguments).
if "--tree" in sys.argv[:-1]:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

from benchlib import callgrind_instrument, callgrind_run, free_ports, machine, rss_mib  # noqa: E402

from dcim.app.config import parse_config  # noqa: E402
from dcim.drivers.base import DriverContext  # noqa: E402
from dcim.drivers.errors import DriverError  # noqa: E402
from dcim.drivers.modbus.config import ModbusDevice  # noqa: E402
from dcim.drivers.modbus.driver import ModbusDriver, make_driver  # noqa: E402
from dcim.drivers.profiles import load_profile  # noqa: E402


def config_raw(n: int, max_in_flight: int = 1) -> dict[str, Any]:
    devices = [{"id": f"cdu-{i}", "kind": "cdu", "protocol": "modbus", "host": "127.0.0.1", "port": port,
                "profile": "generic-cdu", "interval": "1s", "timeout": "800ms", "retries": 0, "simulate": True,
                "max_in_flight": max_in_flight}
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


def run_lean_responder(raw: dict[str, Any], ready: EventType) -> None:
    """Every device's registers encoded once from the frozen plant (the simulator's own encoding), each read
    request answered with one slice: a few microseconds of CPU a request, where pymodbus' server takes
    several times the driver's. The same responder as bench_saturation's `--serve`."""
    import struct

    from dcim.drivers.profiles import load_profile
    from dcim.simulators.modbus import _Unit
    from dcim.simulators.plant import Plant

    config = parse_config(raw)
    plant = Plant(config, frozen=True)
    tables_by_port: dict[int, dict[int, tuple[int, bytes]]] = {}
    for device in config.devices:
        assert isinstance(device, ModbusDevice)
        unit = _Unit(plant, device, load_profile(device.profile))
        values = plant.values(device.id)
        tables: dict[int, tuple[int, bytes]] = {}
        for function, table in ((3, "holding"), (4, "input")):
            points = unit.tables[table]
            if points:
                low = min(p.address for p in points)
                registers = [0] * (max(p.address + p.count for p in points) - low)
                unit._refresh(table, low, registers, values)
                tables[function] = (low, struct.pack(f">{len(registers)}H", *registers))
        for function, table in ((1, "coil"), (2, "discrete")):
            if unit.tables[table]:
                size = max(p.address + 1 for p in unit.tables[table])
                words = [0] * ((size + 15) // 16)
                unit._refresh(table, 0, words, values)
                tables[function] = (0, bytes((words[a // 16] >> (a % 16)) & 1 for a in range(size)))
        tables_by_port[device.port] = tables

    class Responder(asyncio.Protocol):
        def __init__(self, tables: dict[int, tuple[int, bytes]]) -> None:
            self.tables = tables
            self.buffer = b""
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while len(self.buffer) >= 12:
                tid, _, length, unit_id, function, address, count = struct.unpack_from(">HHHBBHH", self.buffer)
                if len(self.buffer) < 6 + length:
                    return
                self.buffer = self.buffer[6 + length:]
                low, block = self.tables.get(function, (0, b""))
                width = 1 if function in (1, 2) else 2
                start, end = width * (address - low), width * (address - low + count)
                if start < 0 or end > len(block):
                    self.transport.write(struct.pack(">HHHBBB", tid, 0, 3, unit_id, function | 0x80, 2))
                    continue
                body = block[start:end]
                if width == 1:
                    body = bytes(sum(bit << i for i, bit in enumerate(body[j:j + 8])) for j in range(0, count, 8))
                self.transport.write(struct.pack(">HHHBBB", tid, 0, 3 + len(body), unit_id, function, len(body))
                                     + body)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for port, tables in tables_by_port.items():
            await loop.create_server(lambda t=tables: Responder(t), "127.0.0.1", port,  # type: ignore[misc]
                                     reuse_address=True)
        ready.set()
        await asyncio.Event().wait()

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


@contextlib.asynccontextmanager
async def devices(n: int, responder: str, max_in_flight: int) -> AsyncIterator[list[ModbusDriver]]:
    """N devices served in a child process (spawned: a new interpreter, whose CPU is not counted, and which
    valgrind does not follow), and a driver for each."""
    raw = config_raw(n, max_in_flight)
    ready = multiprocessing.get_context("spawn").Event()
    target = run_lean_responder if responder == "lean" else run_simulators
    child = multiprocessing.get_context("spawn").Process(target=target, args=(raw, ready), daemon=True)
    child.start()
    try:
        if not await asyncio.to_thread(ready.wait, 120):
            raise RuntimeError("simulators did not start")
        config = parse_config(raw)
        context = DriverContext()
        profile = load_profile("generic-cdu")
        yield [make_driver(d, profile, context) for d in config.devices]
    finally:
        child.terminate()
        child.join(10)


async def measure(n: int, seconds: float, warmup: float, responder: str = "pymodbus",
                  max_in_flight: int = 1) -> dict[str, float]:
    async with devices(n, responder, max_in_flight) as drivers:
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
    lat = sorted(stats.latencies) or [0.0]
    return {
        "n": n, "polls_per_s": stats.polls / wall, "points_per_s": stats.points / wall,
        "cpu_s_per_1000_points": 1000 * cpu / max(stats.points, 1), "cpu_pct": 100 * cpu / wall,
        "cpu_us_per_poll": 1e6 * cpu / max(stats.polls, 1),
        "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
        "failed": stats.failed, "rss_mib": memory,
    }



async def count_polls(n: int, rounds: int, max_in_flight: int) -> None:
    """Under callgrind: N devices of the lean responder, connected and polled once, then (instrumented)
    polled one at a time for `rounds` rounds. Prints the polls and points counted."""
    async with devices(n, "lean", max_in_flight) as drivers:
        for driver in drivers:
            await driver.connect()
            await driver.read()
        await callgrind_instrument("on")
        polls = points = 0
        for _ in range(rounds):
            for driver in drivers:
                points += len(await driver.read())
                polls += 1
        await callgrind_instrument("off")
        print(f"counted {polls} polls {points} points", flush=True)
        for driver in drivers:
            await driver.close()


def count(n: int, rounds: int, max_in_flight: int, tree: str | None) -> tuple[int, int, int]:
    """(instructions, polls, points) of one `--count` measurement, in this script again under callgrind."""
    instructions, out = callgrind_run(
        [sys.executable, str(Path(__file__).resolve()), "--count-run", str(n), "--rounds", str(rounds),
         "--max-in-flight", str(max_in_flight), *(["--tree", tree] if tree else [])], dict(os.environ))
    counted = re.search(r"counted (\d+) polls (\d+) points", out)
    if counted is None:
        raise SystemExit(f"no count of polls from the measurement:\n{out}")
    return instructions, int(counted.group(1)), int(counted.group(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 10, 100; 5 s each")
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--responder", choices=("pymodbus", "lean"), default="pymodbus",
                        help="the devices: dcim's simulator (pymodbus' server, the default) or the lean responder")
    parser.add_argument("--max-in-flight", type=int, default=1, help="the devices' max_in_flight (1)")
    parser.add_argument("--tree", help="import dcim from this source tree (before/after figures)")
    parser.add_argument("--count", action="store_true",
                        help="count instructions a poll under valgrind, polls one at a time (default 50 devices, "
                             "4 rounds)")
    parser.add_argument("--rounds", type=int, default=4, help="--count: rounds of polls (4)")
    parser.add_argument("--count-run", type=int, help=argparse.SUPPRESS)  # under callgrind: N devices
    args = parser.parse_args()
    if args.count_run is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
        asyncio.run(count_polls(args.count_run, args.rounds, args.max_in_flight))
        return
    if args.count:
        import dcim

        print(f"machine: {machine()}; dcim from {Path(dcim.__file__).parent.parent}; lean responder, "
              f"max_in_flight {args.max_in_flight}, polls one at a time")
        print(f"{'N':>5} {'rounds':>6} {'instr/poll':>11} {'instr/pt':>9}")
        for n in args.sizes or [50]:
            instructions, polls, points = count(n, args.rounds, args.max_in_flight, args.tree)
            print(f"{n:>5} {args.rounds:>6} {instructions / polls:>11,.0f} {instructions / points:>9,.0f}",
                  flush=True)
        return
    sizes = args.sizes or ([10, 100] if args.quick else [10, 100, 500])
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    import dcim

    print(f"machine: {machine()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"dcim from {Path(dcim.__file__).parent.parent}; devices: {args.responder} responder, "
          f"max_in_flight {args.max_in_flight}")
    print(f"generic-cdu: {len(load_profile('generic-cdu').points)} points, 3 requests a poll; 1 s interval; "
          f"{seconds:g} s measured after a warm-up")
    header = (f"{'N':>5} {'polls/s':>9} {'points/s':>10} {'CPU s/1k pts':>13} {'CPU us/poll':>12} "
              f"{'us/pt':>6} {'CPU %':>7} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7} {'RSS MiB':>8}")
    print(header)
    for n in sizes:
        r = asyncio.run(measure(n, seconds, warmup=3.0, responder=args.responder,
                                max_in_flight=args.max_in_flight))
        print(f"{r['n']:>5.0f} {r['polls_per_s']:>9.1f} {r['points_per_s']:>10.0f} "
              f"{r['cpu_s_per_1000_points']:>13.4f} {r['cpu_us_per_poll']:>12.1f} "
              f"{r['cpu_us_per_poll'] / 24:>6.2f} {r['cpu_pct']:>7.1f} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['failed']:>7.0f} {r['rss_mib']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
