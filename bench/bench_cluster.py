"""Failover of a dcim cluster: how long after a kill -9 the dead node's devices are polled by the others.

The site of tests/cluster/harness.py: a three-member etcd (Debian's etcd-server), Mosquitto, `dcim simulate`
serving six CDUs (Modbus, polled every 500 ms, one shard each) and three `dcim run` nodes with the default
`lease_ttl` of 5 s. Each round: wait for a steady cluster (every node live, every device polled by exactly
one node, one leader), kill -9 one node (the nodes in turn, so the leader is among the victims), and measure
from the kill to the moment every device it polled is online on another node (each node's /healthz, read
every 100 ms: the figure is that much coarser), and, when the victim led, to the moment another node leads;
and the polls lost per device: from the broker's telemetry (a subscriber on the CDUs' topics), the polls due
between the victim's last poll of a device before the kill and the new owner's first that never happened.
Then the victim is started again.

Then throughput: 1, 2 and 3 nodes (a fresh site each) polling 60 CDUs every second (1,440 points/s offered),
publishing to Mosquitto and storing into InfluxDB 1.x (each node's own ingest, the default `source: local`).
Over a 30 s window after every device is polled: points polled (successful polls from each node's /metrics,
times the profile's 24 points), points stored (counted in the database), broker-acknowledged messages, and
the nodes' CPU from /proc (user + system), per 1,000 points stored and per node.

    python bench/bench_cluster.py            # 20 kills, 30 s windows
    python bench/bench_cluster.py --quick    # 5 kills, 10 s windows
    python bench/bench_cluster.py --failover-only --kills 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import cpu_seconds, machine  # noqa: E402

from tests.cluster.etcd import EtcdCluster  # noqa: E402
from tests.cluster.harness import INTERVAL_S, NODES, TTL_S, Site, Telemetry, polls_lost  # noqa: E402
from tests.receivers import HttpReceiver  # noqa: E402
from tests.servers import InfluxDBv1, Mosquitto, http_request  # noqa: E402

DEVICES = {f"cdu-{n}" for n in range(1, 7)}


def steady(site: Site) -> dict[str, str]:
    for node in NODES:
        if not site.alive(node):
            site.start(node)

    def ready() -> dict[str, str] | None:
        statuses = site.statuses()
        if set(statuses) != set(NODES) or not all(s["cluster"]["live"] for s in statuses.values()):
            return None
        if any(sorted(s["cluster"]["nodes"]) != sorted(NODES) for s in statuses.values()):
            return None
        polled = site.polled()
        if set(polled) != DEVICES or any("," in n for n in polled.values()) or site.leader() is None:
            return None
        return polled

    return site.wait(ready, "a steady cluster", timeout=180)


THROUGHPUT_CDUS = 60
POINTS_PER_POLL = 24  # generic-cdu


def counters(site: Site, node: str) -> tuple[float, float]:
    """(successful polls, broker-acknowledged messages) from the node's /metrics."""
    port = site.http_port(node)
    assert port is not None
    _, body = http_request("GET", f"http://127.0.0.1:{port}/metrics", timeout=10)
    polls = published = 0.0
    for line in body.decode().splitlines():
        if line.startswith("dcim_polls_total{") and 'result="ok"' in line:
            polls += float(line.rsplit(" ", 1)[1])
        elif line.startswith("dcim_mqtt_published_total"):
            published += float(line.rsplit(" ", 1)[1])
    return polls, published


def stored(influx: InfluxDBv1) -> int:
    rows = influx.query("SELECT count(flow_lpm) FROM cdu")
    return int(rows[0]["count"]) * POINTS_PER_POLL if rows else 0


def throughput(tmp: Path, etcd: EtcdCluster, broker: Mosquitto, receiver: HttpReceiver, count: int,
               window: float) -> str:
    names = NODES[:count]
    (tmp / f"nodes-{count}").mkdir()
    devices = {f"cdu-{n}" for n in range(1, THROUGHPUT_CDUS + 1)}
    with InfluxDBv1(tmp / f"nodes-{count}" / "influxdb") as influx, \
            Site(tmp / f"nodes-{count}", etcd.endpoints, broker, receiver, nodes=names, cdus=THROUGHPUT_CDUS,
                 interval="1s", prefix=f"/dcim-bench-{count}",
                 extra={"influxdb": {"url": influx.url, "api": "v1", "database": "dcim"}}) as site:
        site.start_all()

        def ready() -> bool:
            statuses = site.statuses()
            return set(statuses) == set(names) and set(site.polled()) == devices

        site.wait(ready, f"{count} nodes polling {THROUGHPUT_CDUS} CDUs", timeout=300)
        site.wait(lambda: stored(influx) > 0, "points in the database", timeout=120)
        time.sleep(5)  # warm-up past the first flushes: a measurement window follows, not a wait for a condition
        pids = {n: site.nodes[n].process.pid for n in names}  # type: ignore[union-attr]
        start = {n: (counters(site, n), cpu_seconds(pids[n])) for n in names}
        stored0 = stored(influx)
        began = time.monotonic()
        time.sleep(window)  # a measurement window, not a wait for a condition
        end = {n: (counters(site, n), cpu_seconds(pids[n])) for n in names}
        stored1 = stored(influx)
        took = time.monotonic() - began
    polls = sum(end[n][0][0] - start[n][0][0] for n in names)
    published = sum(end[n][0][1] - start[n][0][1] for n in names)
    cpu = {n: end[n][1] - start[n][1] for n in names}
    points = polls * POINTS_PER_POLL / took
    kept = (stored1 - stored0) / took
    per_node = ", ".join(f"{100 * c / took:.0f} %" for c in cpu.values())
    return (f"| {count} | {THROUGHPUT_CDUS * POINTS_PER_POLL:,} | {points:,.0f} | {kept:,.0f} | "
            f"{published / took:,.0f} | {sum(cpu.values()) / (kept * took / 1000):.3f} | {per_node} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 kills instead of 20")
    parser.add_argument("--kills", type=int, default=None)
    parser.add_argument("--window", type=float, default=None, help="throughput window, seconds")
    parser.add_argument("--failover-only", action="store_true", help="skip the throughput runs")
    args = parser.parse_args()
    kills = args.kills if args.kills is not None else (5 if args.quick else 20)
    window = args.window or (10.0 if args.quick else 30.0)
    rows: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="dcim-bench-cluster-"))
    takeover: list[float] = []
    election: list[float] = []
    missed: list[int] = []  # polls lost, per device and kill
    with EtcdCluster(tmp / "etcd") as etcd, Mosquitto(tmp / "mosquitto") as broker, HttpReceiver() as receiver:
        for count in () if args.failover_only else (1, 2, 3):
            rows.append(throughput(tmp, etcd, broker, receiver, count, window))
            print(rows[-1], flush=True)
        with Site(tmp, etcd.endpoints, broker, receiver) as site, Telemetry(broker) as telemetry:
            site.start_all()
            for round_ in range(kills):
                before = steady(site)
                victim = NODES[round_ % len(NODES)]
                led = site.leader() == victim
                lost = {d for d, n in before.items() if n == victim}
                others = [n for n in NODES if n != victim]
                site.wait(lambda lost=lost: all(telemetry.times(d) for d in lost), "the victim's telemetry")
                killed_ns = time.time_ns()
                killed = time.monotonic()
                site.kill(victim)
                moved: float | None = None
                new_leader: float | None = None
                while moved is None or (led and new_leader is None):
                    polled = site.polled()
                    now = time.monotonic() - killed
                    if moved is None and all(polled.get(d) in others for d in lost):
                        moved = now
                    if led and new_leader is None and site.leader() in others:
                        new_leader = now
                    if now > 120:
                        raise SystemExit(f"no take-over after 120 s\n{site.logs()}")
                    time.sleep(0.1)
                took = moved
                takeover.append(took)
                gaps = [site.wait(lambda d=d, at=killed_ns: telemetry.around(d, at), f"{d} polled after the kill")
                        for d in sorted(lost)]
                lost_polls = [polls_lost(first - last, INTERVAL_S) for last, first in gaps]
                missed.extend(lost_polls)
                if new_leader is not None:
                    election.append(new_leader)
                print(f"kill {round_ + 1:2d}: {victim}{' (leader)' if led else ''}, {len(lost)} devices: "
                      f"polled elsewhere after {took:.2f} s, polls lost {lost_polls}"
                      + (f", new leader after {new_leader:.2f} s" if new_leader is not None else ""), flush=True)
    print(f"\n{machine()}")
    if rows:
        print(f"\nthroughput, {window:g} s windows:")
        print("| nodes | points/s offered | points/s polled | points/s stored | messages/s acked "
              "| CPU s per 1,000 points stored | CPU per node |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        print("\n".join(rows))
    if not takeover:
        return
    print(f"\nlease_ttl {TTL_S} s, {kills} kills")
    print(f"take-over s: median {statistics.median(takeover):.2f}, min {min(takeover):.2f}, "
          f"max {max(takeover):.2f}, p90 {sorted(takeover)[int(0.9 * (len(takeover) - 1))]:.2f}")
    print(f"polls lost per device per kill (every {INTERVAL_S:g} s): median {statistics.median(missed):g}, "
          f"min {min(missed)}, max {max(missed)} ({len(missed)} device failovers)")
    if election:
        print(f"new leader s ({len(election)} leader kills): median {statistics.median(election):.2f}, "
              f"max {max(election):.2f}")


if __name__ == "__main__":
    main()
