"""Failover of a dcim cluster: how long after a kill -9 the dead node's devices are polled by the others.

The site of tests/cluster/harness.py: a three-member etcd (Debian's etcd-server), Mosquitto, `dcim simulate`
serving six CDUs (Modbus, polled every 500 ms, one shard each) and three `dcim run` nodes with the default
`lease_ttl` of 5 s. Each round: wait for a steady cluster (every node live, every device polled by exactly
one node, one leader), kill -9 one node (the nodes in turn, so the leader is among the victims), and measure
from the kill to the moment every device it polled is online on another node (each node's /healthz, read
every 100 ms: the figure is that much coarser), and, when the victim led, to the moment another node leads.
Then the victim is started again.

    python bench/bench_cluster.py            # 20 kills
    python bench/bench_cluster.py --quick    # 5 kills
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

from benchlib import machine  # noqa: E402

from tests.cluster.etcd import EtcdCluster  # noqa: E402
from tests.cluster.harness import NODES, TTL_S, Site  # noqa: E402
from tests.receivers import HttpReceiver  # noqa: E402
from tests.servers import Mosquitto  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 kills instead of 20")
    parser.add_argument("--kills", type=int, default=None)
    args = parser.parse_args()
    kills = args.kills or (5 if args.quick else 20)
    tmp = Path(tempfile.mkdtemp(prefix="dcim-bench-cluster-"))
    takeover: list[float] = []
    election: list[float] = []
    with EtcdCluster(tmp / "etcd") as etcd, Mosquitto(tmp / "mosquitto") as broker, HttpReceiver() as receiver:
        with Site(tmp, etcd.endpoints, broker, receiver) as site:
            site.start_all()
            for round_ in range(kills):
                before = steady(site)
                victim = NODES[round_ % len(NODES)]
                led = site.leader() == victim
                lost = {d for d, n in before.items() if n == victim}
                others = [n for n in NODES if n != victim]
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
                if new_leader is not None:
                    election.append(new_leader)
                print(f"kill {round_ + 1:2d}: {victim}{' (leader)' if led else ''}, {len(lost)} devices: "
                      f"polled elsewhere after {took:.2f} s"
                      + (f", new leader after {new_leader:.2f} s" if new_leader is not None else ""), flush=True)
    print(f"\n{machine()}")
    print(f"lease_ttl {TTL_S} s, {kills} kills")
    print(f"take-over s: median {statistics.median(takeover):.2f}, min {min(takeover):.2f}, "
          f"max {max(takeover):.2f}, p90 {sorted(takeover)[int(0.9 * (len(takeover) - 1))]:.2f}")
    if election:
        print(f"new leader s ({len(election)} leader kills): median {statistics.median(election):.2f}, "
              f"max {max(election):.2f}")


if __name__ == "__main__":
    main()
