"""End-to-end throughput: N simulated CDUs polled at 1 s -> `dcim run` -> mosquitto -> ingest -> InfluxDB 1.x.

Prints, for each N: points per second delivered to the database, daemon CPU seconds per 1,000 points, and
the daemon's resident memory. The simulators run in a process of their own (`dcim simulate`), so their CPU
is not counted; the daemon's CPU is read from /proc.

    python bench/bench_e2e.py                # N = 10, 100, 500; 30 s measured each
    python bench/bench_e2e.py --quick        # N = 10, 100; 10 s each
    python bench/bench_e2e.py --sizes 50 --seconds 20
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import cpu_seconds, free_ports, machine, rss_mib  # noqa: E402

from dcim.drivers.profiles import load_profile  # noqa: E402
from tests.servers import InfluxDBv1, Mosquitto  # noqa: E402


def config_for(n: int, workdir: Path, mqtt_port: int, influx_url: str) -> Path:
    devices: list[dict[str, Any]] = []
    racks = []
    for i, port in enumerate(free_ports(n), start=1):
        devices.append({"id": f"cdu-{i}", "kind": "cdu", "protocol": "modbus", "host": "127.0.0.1",
                        "port": port, "profile": "generic-cdu", "interval": "1s", "timeout": "800ms",
                        "retries": 0, "simulate": True})
        racks.append({"id": f"R{i}", "cooling": "liquid", "power_budget_kw": 150, "cdu": f"cdu-{i}"})
    config = {
        "site": {"id": "bench"}, "rooms": [{"id": "dh1", "rows": [{"id": "A", "racks": racks}]}],
        "devices": devices, "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "influxdb": {"url": influx_url, "api": "v1", "database": "dcim"},
        "state_dir": str(workdir / "state"),
        "logging": {"level": os.environ.get("BENCH_LOG", "warning"), "format": "json"},  # BENCH_LOG=info to debug
        "http": {"enabled": False},
    }
    path = workdir / f"bench-{n}.yaml"
    path.write_text(yaml.safe_dump(config))
    # The simulator's copy logs at info: its own "simulators ready" line is what the bench waits for.
    (workdir / f"bench-{n}-simulate.yaml").write_text(yaml.safe_dump({**config, "logging": {"level": "info",
                                                                                            "format": "json"}}))
    return path


def stored_points(influx: InfluxDBv1, points_per_line: int) -> int:
    rows = influx.query("SELECT count(flow_lpm) FROM cdu")
    return int(rows[0]["count"]) * points_per_line if rows else 0


def run(n: int, seconds: float, workdir: Path, profile: Path | None = None) -> dict[str, float]:
    points_per_line = len(load_profile("generic-cdu").points)
    with Mosquitto(workdir / f"mqtt-{n}") as mqtt, InfluxDBv1(workdir / f"influx-{n}") as influx:
        path = config_for(n, workdir, mqtt.port, influx.url)
        dcim = [sys.executable, "-m", "dcim.app.cli"]
        log = (workdir / f"bench-{n}.log").open("wb")
        sim_config = path.with_name(f"bench-{n}-simulate.yaml")
        sim = subprocess.Popen([*dcim, "simulate", "-c", str(sim_config), "--frozen"], cwd=REPO, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 120
            # `dcim simulate` says itself when every socket is bound ("simulators ready"): nothing is probed.
            while "simulators ready" not in Path(log.name).read_text(errors="replace"):
                if time.monotonic() > deadline or sim.poll() is not None:
                    log.flush()
                    tail = Path(log.name).read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"simulators did not start:\n{tail}")
                time.sleep(0.2)
            daemon = subprocess.Popen([*dcim, "run", "-c", str(path)], cwd=REPO, stdout=log, stderr=log)
            try:
                # Warm-up: imports (slow on a busy machine), connections, first polls; measured only once points
                # reach the database, and a few seconds more.
                deadline = time.monotonic() + 180
                while stored_points(influx, points_per_line) == 0 and time.monotonic() < deadline:
                    time.sleep(0.5)
                time.sleep(min(10.0, 3.0 + n / 100))
                cpu0, points0, t0 = cpu_seconds(daemon.pid), stored_points(influx, points_per_line), time.monotonic()
                spy = None
                if profile is not None:
                    # Every thread of the daemon, sampled during the measured window, as collapsed stacks.
                    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p",
                                            str(daemon.pid), "-d", str(int(seconds)), "-r", "50", "-f", "raw",
                                            "-o", str(profile / f"e2e-{n}.txt")], stdout=log, stderr=log)
                time.sleep(seconds)
                if spy is not None:
                    spy.wait(60)
                cpu1, points1, t1 = cpu_seconds(daemon.pid), stored_points(influx, points_per_line), time.monotonic()
                rss = rss_mib(daemon.pid)
            finally:
                daemon.terminate()
                daemon.wait(30)
        finally:
            sim.terminate()
            sim.wait(30)
    points = points1 - points0
    return {
        "devices": n,
        "expected_pps": n * points_per_line,
        "points_per_s": points / (t1 - t0),
        "cpu_s_per_1000": (cpu1 - cpu0) / points * 1000 if points else float("nan"),
        "cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
        "rss_mib": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="*")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="record the daemon with py-spy during each window; collapsed stacks to DIR/e2e-N.txt")
    args = parser.parse_args()
    sizes = args.sizes or ([10, 100] if args.quick else [10, 100, 500])
    seconds = args.seconds or (10.0 if args.quick else 30.0)
    print(f"machine: {machine()}")
    print(f"{'CDUs':>6} {'expected pts/s':>15} {'stored pts/s':>13} {'CPU s/1000 pts':>15} "
          f"{'daemon CPU':>11} {'RSS MiB':>8}")
    with tempfile.TemporaryDirectory(prefix="dcim-bench-") as tmp:
        for n in sizes:
            r = run(n, seconds, Path(tmp), args.py_spy)
            print(f"{n:>6} {r['expected_pps']:>15.0f} {r['points_per_s']:>13.0f} {r['cpu_s_per_1000']:>15.4f} "
                  f"{r['cpu_pct']:>10.1f}% {r['rss_mib']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
