"""How long InfluxDB 1.x takes to answer a dashboard refresh.

    .venv/bin/python bench/bench_grafana.py            # 2 x 10 racks, 1 hour of 10 s data
    .venv/bin/python bench/bench_grafana.py --quick    # 2 x 3 racks, 15 minutes

A real influxd on a temp dir is filled with what the daemon writes for a hall (tests/grafana/fill.py: the
real profiles, plant, rules.metrics and line protocol), then every dashboard is "refreshed" several times:
its variable queries, then each panel query in turn (Grafana sends them in parallel, so the sum is an upper
bound of the wait), with the default time range (6 h, 24 h for alarms) and a 10 s $__interval.
Prints the fill rate and, per dashboard, the median and worst refresh and its slowest query.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import machine

from dcim.app.config import parse_config
from tests.grafana.dashboards import interpolate, load_all, panels, regex_value
from tests.grafana.fill import synthetic_lines
from tests.grafana.hall import hall_config
from tests.grafana.runner import influxql
from tests.servers import InfluxDBv1

WINDOW = {"alarms.json": 24 * 3600}



def refresh(db: InfluxDBv1, dashboard: dict[str, Any], to_ms: int, window_s: int) -> tuple[float, str, float]:
    """One refresh: (seconds, slowest query's panel, its seconds)."""
    from_ms = to_ms - window_s * 1000
    chosen: dict[str, str] = {}
    slowest = ("", 0.0)
    began = time.perf_counter()
    for var in dashboard["templating"]["list"]:
        if var["type"] == "custom":
            values = [o["value"] for o in var["options"]]
        else:
            series = influxql(db.url, db.database, interpolate(var["query"], chosen, from_ms=from_ms, to_ms=to_ms))
            values = sorted({row[1] for s in series for row in s.get("values", [])})
        chosen[var["name"]] = regex_value(values[:1]) if values else "none"
    for panel in panels(dashboard):
        for target in panel["targets"]:
            t0 = time.perf_counter()
            influxql(db.url, db.database, interpolate(target["query"], chosen, from_ms=from_ms, to_ms=to_ms))
            took = time.perf_counter() - t0
            if took > slowest[1]:
                slowest = (panel["title"], took)
    return time.perf_counter() - began, slowest[0], slowest[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--racks-per-row", type=int, default=None)
    parser.add_argument("--minutes", type=int, default=None, help="minutes of data at 10 s")
    parser.add_argument("--refreshes", type=int, default=None)
    args = parser.parse_args()
    racks = args.racks_per_row or (3 if args.quick else 10)
    minutes = args.minutes or (15 if args.quick else 60)
    refreshes = args.refreshes or (3 if args.quick else 7)
    config = parse_config(hall_config(racks_per_row=racks))
    print(f"machine: {machine()}")
    print(f"hall: {2 * racks} racks, {len(config.devices)} devices; {minutes} min of data every 10 s")
    with InfluxDBv1() as db:
        now_ns = time.time_ns()
        t0 = time.perf_counter()
        lines = synthetic_lines(config, now_ns, steps=minutes * 6, step_s=10.0)
        generated = time.perf_counter() - t0
        t0 = time.perf_counter()
        for start in range(0, len(lines), 5000):
            db.write(lines[start:start + 5000])
        wrote = time.perf_counter() - t0
        print(f"fill: {len(lines)} lines, generated in {generated:.1f} s, written in {wrote:.1f} s "
              f"({len(lines) / wrote:,.0f} lines/s through /write in batches of 5000)")
        to_ms = now_ns // 1_000_000 + 60_000
        print(f"{'dashboard':<16}{'queries':>8}{'median s':>10}{'worst s':>9}  slowest query")
        for name, dashboard in load_all().items():
            window = WINDOW.get(name, 6 * 3600)
            queries = sum(len(p["targets"]) for p in panels(dashboard)) + len(dashboard["templating"]["list"])
            runs = [refresh(db, dashboard, to_ms, window) for _ in range(refreshes)]
            times = [r[0] for r in runs]
            worst = max(runs, key=lambda r: r[2])
            print(f"{name:<16}{queries:>8}{statistics.median(times):>10.3f}{max(times):>9.3f}  "
                  f"{worst[1]} ({worst[2]:.3f} s)")


if __name__ == "__main__":
    main()
