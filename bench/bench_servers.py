"""Start-up cost of the tests' real servers (tests/servers.py): is a fresh server per test affordable?

For each server it starts a fresh instance in a new temp dir (cold: first start creates the data
directories), restarts it on the same port (warm) and stops it, N times, and prints the median and
the worst of each, in milliseconds.

    python bench/bench_servers.py            # 20 rounds
    python bench/bench_servers.py --quick    # 5 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import machine  # noqa: E402

from tests.servers import InfluxDBv1, Mosquitto, ServerProcess, VictoriaMetrics  # noqa: E402


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.1f} {max(values) * 1000:7.1f}"


def bench(cls: type[ServerProcess], rounds: int) -> None:
    cold: list[float] = []
    warm: list[float] = []
    stop: list[float] = []
    for _ in range(rounds):
        server = cls()
        try:
            began = time.monotonic()
            server.start()
            cold.append(time.monotonic() - began)
            began = time.monotonic()
            server.stop()
            server.start()
            warm.append(time.monotonic() - began)
            began = time.monotonic()
            server.stop()
            stop.append(time.monotonic() - began)
        finally:
            server.close()
    print(f"{cls.name:<18} {_ms(cold)}   {_ms(warm)}   {_ms(stop)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 20")
    parser.add_argument("--rounds", type=int, help="rounds per server")
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.quick else 20)
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"{rounds} rounds; milliseconds, median and worst")
    print(f"{'server':<18} {'start':>7} {'worst':>7}   {'restart':>7} {'worst':>7}   {'stop':>7} {'worst':>7}")
    for cls in (Mosquitto, InfluxDBv1, VictoriaMetrics):
        bench(cls, rounds)


if __name__ == "__main__":
    main()
