"""OPC UA subscriptions: data changes per second and CPU per 1,000 changes, N chillers x M nodes.

    .venv/bin/python bench/bench_opcua.py              # a few (N, M) cases, 10 s each
    .venv/bin/python bench/bench_opcua.py --quick      # one short case
    .venv/bin/python bench/bench_opcua.py -n 4 -m 50 --seconds 20

The simulator runs in a separate process (`--serve`): N asyncua servers, each with M Double AnalogItem
nodes, every node changing on every refresh (default 100 ms), so the offered load is N x M / refresh
changes per second. This process runs N OpcUaSubscriber drivers (publishing interval 100 ms, no deadband)
and counts the samples they emit. CPU is process time (user + system) of each side over the measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import free_ports, machine  # noqa: E402

from dcim.app.config import parse_config  # noqa: E402
from dcim.core.samples import Quality, Sample  # noqa: E402
from dcim.drivers.base import DriverContext  # noqa: E402
from dcim.drivers.opcua.config import OpcUaDevice  # noqa: E402
from dcim.drivers.opcua.driver import OpcUaSubscriber, make_driver  # noqa: E402
from dcim.drivers.profiles import load_profile  # noqa: E402

NAMESPACE = "urn:dcim:bench"


def write_profile(directory: Path, nodes: int) -> str:
    name = f"bench-chiller-{nodes}"
    points = [{"name": f"v{i}", "unit": "degC", "node": f"nsu={NAMESPACE};s=Chiller.V{i}"} for i in range(nodes)]
    profile = {"name": name, "kind": "chiller", "protocol": "opcua", "options": {"namespace": NAMESPACE},
               "points": points}
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(profile))
    return name


def devices(profile_dir: Path, profile: str, ports: list[int]) -> list[OpcUaDevice]:
    raw = {
        "site": {"id": "bench"},
        "profile_dirs": [str(profile_dir)],
        "devices": [
            {"id": f"chiller-{i}", "kind": "chiller", "protocol": "opcua", "profile": profile,
             "endpoint": f"opc.tcp://127.0.0.1:{port}", "publishing_interval": "100ms",
             "sampling_interval": "50ms", "queue_size": 10, "timeout": "5s"}
            for i, port in enumerate(ports)
        ],
    }
    config = parse_config(raw)
    return [d for d in config.devices if isinstance(d, OpcUaDevice)]


class ChangingPlant:
    """Stands in for the plant: every node of every chiller changes on every read."""

    def __init__(self) -> None:
        self.tick = 0

    def values(self, device: str) -> dict[str, Any]:
        self.tick += 1
        return {f"v{i}": 20.0 + (self.tick % 1000) * 0.01 + i for i in range(10_000)}

    def fault(self, device: str, fault: str) -> None:
        return None

    def answering(self, device: str) -> bool:
        return True

    def clear(self, device: str, fault: str | None = None) -> None:
        return None

    def write(self, device: str, point: str, value: Any) -> None:
        return None


async def serve(profile_dir: Path, profile: str, ports: list[int], refresh: float) -> None:
    from dcim.simulators.opcua import ChillerServer

    plant: Any = ChangingPlant()
    servers = [ChillerServer(plant, d, load_profile(profile, (profile_dir,)), refresh=refresh)
               for d in devices(profile_dir, profile, ports)]
    async with asyncio.TaskGroup() as group:
        for server in servers:
            group.create_task(server.run())
        for server in servers:
            await server.running.wait()
        print("ready", flush=True)



def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_case(chillers: int, nodes: int, seconds: float, refresh: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dcim-bench-opcua-") as tmp:
        profile_dir = Path(tmp)
        profile = write_profile(profile_dir, nodes)
        ports = free_ports(chillers)
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", "--profile-dir", str(profile_dir), "--profile", profile,
            "--refresh", str(refresh), "--ports", ",".join(map(str, ports)),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), timeout=120)
            if line.strip() != b"ready":
                raise RuntimeError(f"simulator did not start: {line!r}")
            count = 0
            good = 0

            def emit(samples: list[Sample]) -> None:
                nonlocal count, good
                count += len(samples)
                good += sum(1 for s in samples if s.quality is Quality.GOOD)

            online: list[bool] = []
            all_up = asyncio.Event()

            def status(up: bool, _error: str) -> None:
                online.append(up)
                if sum(online) >= chillers:
                    all_up.set()

            drivers = [make_driver(d, load_profile(profile, (profile_dir,)), DriverContext())
                       for d in devices(profile_dir, profile, ports)]
            tasks = []
            for drv in drivers:
                assert isinstance(drv, OpcUaSubscriber)
                tasks.append(asyncio.create_task(drv.subscribe(emit, status)))
            await asyncio.wait_for(all_up.wait(), timeout=60)
            await asyncio.sleep(1.0)  # warm-up: the initial values of every item are not part of the figure
            count0, cpu0, child0, t0 = count, time.process_time(), proc_cpu(child.pid), time.monotonic()
            await asyncio.sleep(seconds)
            count1, cpu1, child1, t1 = count, time.process_time(), proc_cpu(child.pid), time.monotonic()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            changes = count1 - count0
            elapsed = t1 - t0
            return {
                "chillers": chillers, "nodes": nodes, "offered_per_s": chillers * nodes / refresh,
                "changes_per_s": changes / elapsed,
                "client_cpu_ms_per_1000": (cpu1 - cpu0) * 1000 / max(changes, 1) * 1000,
                "client_cpu_pct": (cpu1 - cpu0) / elapsed * 100,
                "server_cpu_pct": (child1 - child0) / elapsed * 100,
                "good_fraction": good / max(count, 1),
            }
        finally:
            child.terminate()
            await child.wait()



async def main(args: argparse.Namespace) -> None:
    if args.quick:
        cases = [(1, 12)]
    elif args.chillers or args.nodes:
        cases = [(args.chillers or 1, args.nodes or 12)]
    else:
        cases = [(1, 12), (4, 12), (1, 100), (4, 100)]
    seconds = 3.0 if args.quick and args.seconds is None else (args.seconds or 10.0)
    print(f"# bench_opcua: {machine()}")
    print(f"# refresh {args.refresh * 1000:.0f} ms, publishing interval 100 ms, {seconds:g} s per case")
    print(f"{'N':>3} {'M':>4} {'offered/s':>10} {'changes/s':>10} {'client CPU ms/1000':>19} "
          f"{'client CPU %':>12} {'server CPU %':>12}")
    for chillers, nodes in cases:
        r = await run_case(chillers, nodes, seconds, args.refresh)
        print(f"{chillers:>3} {nodes:>4} {r['offered_per_s']:>10.0f} {r['changes_per_s']:>10.0f} "
              f"{r['client_cpu_ms_per_1000']:>19.1f} {r['client_cpu_pct']:>12.0f} {r['server_cpu_pct']:>12.0f}",
              flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", "--chillers", type=int, default=None)
    parser.add_argument("-m", "--nodes", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--refresh", type=float, default=0.1, help="simulator change period (s)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import logging

    import structlog

    logging.basicConfig(level=logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.serve:
        asyncio.run(serve(Path(args.profile_dir), args.profile, [int(p) for p in args.ports.split(",")],
                          args.refresh))
    else:
        asyncio.run(main(args))
