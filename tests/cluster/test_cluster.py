"""Three `dcim run` nodes for one site, coordinated through a three-member etcd, over the project's simulators,
a real Mosquitto and a real webhook receiver (tests/cluster/harness.py).

One site per module (starting it costs a few seconds); each test starts from every node running and every
device polled by exactly one node, and leaves the nodes it killed started again. Every wait ends on the
condition it waits for; the times measured (failover) are reported, never asserted against a clock.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from dcim.app.cluster.shards import assign
from tests.cluster.etcd import EtcdCluster
from tests.cluster.harness import INTERVAL_S, NODES, Site, Telemetry, pages, polls_lost
from tests.helpers import require_binary
from tests.receivers import HttpReceiver
from tests.servers import Mosquitto

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DEVICES = {f"cdu-{n}" for n in range(1, 7)}
LEAK = "cdu-leak/cdu-1"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_binary("etcd", "etcd-server")
    require_binary("mosquitto", "mosquitto")
    tmp = tmp_path_factory.mktemp("cluster")
    with EtcdCluster(tmp / "etcd") as etcd, Mosquitto(tmp / "mosquitto") as broker, HttpReceiver() as receiver:
        with Site(tmp, etcd.endpoints, broker, receiver) as site:
            site.etcd = etcd  # type: ignore[attr-defined]
            site.start_all()
            yield site


def steady(site: Site, timeout: float = 120.0) -> dict[str, str]:
    """Every node running and in the cluster, no hand-over under way, one leader, every device polled by
    exactly one node."""
    for node in NODES:
        if not site.alive(node):
            site.start(node)

    def ready() -> dict[str, str] | None:
        statuses = site.statuses()
        if set(statuses) != set(NODES):
            return None
        if any(sorted(s["cluster"]["nodes"]) != sorted(NODES) or not s["cluster"]["live"] for s in statuses.values()):
            return None
        if any(s["cluster"]["lingering"] for s in statuses.values()):
            return None  # a hand-over under way: the shard's old node polls on until the new one has for a while
        polled = site.polled()
        if set(polled) != DEVICES or any("," in n for n in polled.values()) or site.leader() is None:
            return None
        return polled

    return site.wait(ready, "a steady cluster", timeout)


def test_shards_are_balanced_by_rendezvous_hashing(site: Site) -> None:
    polled = steady(site)
    status = site.status("node-1")
    assert status is not None
    shards = status["cluster"]["shards"]
    # A rack's CDU loop is one shard: the six rows are six shards, each with its CDU.
    assert sorted(shards) == [f"rack:R{n}-1" for n in range(1, 7)]
    expected = assign(shards, NODES)
    assert {g: s["owner"] for g, s in shards.items()} == expected
    for group, info in shards.items():
        for device in info["devices"]:
            assert polled[device] == expected[group]
    # Every node polls something (rendezvous over six shards and these three names).
    assert set(polled.values()) == set(NODES)
    # Every node sees the same owners and the same leader.
    views = [(s["cluster"]["leader"], {g: i["owner"] for g, i in s["cluster"]["shards"].items()})
             for s in site.statuses().values()]
    assert all(v == views[0] for v in views)
    # `dcim cluster status` reads the same from etcd, with every node's lease.
    out = subprocess.run([sys.executable, "-m", "dcim.app.cli", "cluster", "status", "-c",
                          str(site.nodes["node-2"].config_path), "--json"],
                         capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(out.stdout)
    assert report["leader"]["node"] == views[0][0]
    assert {g: s["owner"] for g, s in report["shards"].items()} == expected
    assert sorted(report["nodes"]) == sorted(NODES)
    assert all(0 < n["lease_remaining_s"] <= n["lease_granted_s"] for n in report["nodes"].values())
    table = subprocess.run([sys.executable, "-m", "dcim.app.cli", "cluster", "status", "-c",
                            str(site.nodes["node-2"].config_path)], capture_output=True, text=True, timeout=60,
                           check=True).stdout
    assert f"leader {views[0][0]}" in table and "rack:R1-1" in table
    # And /metrics: one leader among the three, every node live.
    metrics = [site.metrics(n) for n in NODES]
    assert sum(m["dcim_cluster_leader"] for m in metrics) == 1
    assert all(m["dcim_cluster_session_up"] == 1 and m["dcim_cluster_nodes"] == 3 for m in metrics)
    assert sum(m["dcim_cluster_shards_owned"] for m in metrics) == len(shards)


def test_an_etcd_member_killed_changes_nothing(site: Site) -> None:
    before = steady(site)
    leader = site.leader()
    etcd: EtcdCluster = site.etcd  # type: ignore[attr-defined]
    # The raft leader: the worst member to lose (no member answers until the others elect a new one).
    victim = site.wait(etcd.leader, "etcd's raft leader")
    victim.kill()
    try:
        # The survivors elect among themselves; the nodes that talked to the dead member move on.
        etcd.wait_healthy()
        start = {n: s["cluster"] for n, s in site.statuses().items()}
        assert set(start) == set(NODES)
        # Two TTLs of renewals on every node after the kill (each renews every TTL/4): a node that had lost
        # its lease would show a new lease id, and its shards or its leadership would have moved.
        site.wait(lambda: all((s := site.status(n)) is not None
                              and s["cluster"]["renewals"] >= start[n]["renewals"] + 8 for n in NODES),
                  "renewals after the member's loss")
        after = site.statuses()
        assert {n: s["cluster"]["lease_id"] for n, s in after.items()} == {n: c["lease_id"] for n, c in start.items()}
        assert all(s["cluster"]["live"] for s in after.values())
        assert site.polled() == before
        assert site.leader() == leader
    finally:
        victim.start()
        etcd.wait_healthy()


def test_a_killed_node_s_devices_are_polled_by_the_others(site: Site) -> None:
    before = steady(site)
    victim = next(n for n in NODES if n != site.leader())
    lost = {d for d, n in before.items() if n == victim}
    assert lost
    survivors = [n for n in NODES if n != victim]
    # Each node's rule engine judges its own shards only: fewer rules than the site's, more for more devices.
    bound_before = {n: site.gauge(n, "dcim_rules_bound") for n in NODES}
    assert all(bound_before.values()), bound_before
    print(f"rules bound per node: {bound_before}")

    def taken_over() -> dict[str, str] | None:
        polled = site.polled()
        return polled if lost <= set(polled) and all(polled[d] in survivors for d in lost) else None

    with Telemetry(site.broker) as telemetry:
        site.wait(lambda: all(telemetry.times(d) for d in lost), "the victim's devices' telemetry")
        killed_ns = time.time_ns()
        killed = time.monotonic()
        site.kill(victim)
        polled = site.wait(taken_over, "take-over")
        took = time.monotonic() - killed
        taken_ns = time.time_ns()
        # Each device's last poll before the kill and its first after it, as the broker delivered them.
        gaps = {d: site.wait(lambda d=d: telemetry.around(d, killed_ns), f"{d}'s first poll after the kill")
                for d in sorted(lost)}
    # The polls lost are those of the failover window only: from the victim's last poll before the kill to
    # the new owner's first, which had happened when the take-over was seen (the device online there).
    for device, (last, first) in gaps.items():
        assert last <= killed_ns < first <= taken_ns, (device, last, killed_ns, first, taken_ns)
    missed = {d: polls_lost(first - last, INTERVAL_S) for d, (last, first) in gaps.items()}
    # Each lost shard went to the node that ranks next for it among the survivors.
    status = site.status(survivors[0])
    assert status is not None
    shards = status["cluster"]["shards"]
    expected = assign(shards, survivors)
    for group, info in shards.items():
        for device in info["devices"]:
            if device in lost:
                assert polled[device] == expected[group]
    # The devices that were not the victim's did not move.
    assert {d: n for d, n in polled.items() if d not in lost} == {d: n for d, n in before.items() if d not in lost}
    ttl = status["cluster"]["lease_ttl_s"]
    print(f"failover of {sorted(lost)} after kill -9 of {victim}: {took:.1f} s (lease TTL {ttl} s); "
          f"polls lost per device (every {INTERVAL_S} s): {missed}")
    # The rules follow the shards: each survivor now judges the rules of the devices it took over as well.
    bound = {n: site.gauge(n, "dcim_rules_bound") for n in survivors}
    assert all(bound[n] and bound[n] > bound_before[n] for n in survivors if n in set(polled[d] for d in lost)), \
        (bound_before, bound)
    site.start(victim)
    after = steady(site)
    # The victim back: rendezvous gives it back exactly its shards.
    assert after == before


def test_leader_killed_during_an_active_alarm_pages_once_and_resolves_once(site: Site) -> None:
    steady(site)
    receiver = site.receiver
    site.fault("cdu-1", "leak")
    site.wait(lambda: pages(receiver, LEAK) == ["firing"], "the leak paged")
    leader = site.leader()
    assert leader is not None
    site.kill(leader)
    survivors = [n for n in NODES if n != leader]

    def new_leader() -> str | None:
        found = site.leader()
        return found if found in survivors else None

    site.wait(new_leader, "a new leader")
    # cdu-1 polled (again) by a live node, its leak firing there: the alarm is active on the new side too
    # (re-evaluated from scratch if cdu-1's shard moved with the leader's death).
    def firing_on_owner() -> str | None:
        owner = site.polled().get("cdu-1")
        alarm = site.alarm(owner, LEAK) if owner in survivors else None
        return owner if alarm is not None and alarm.get("state") == "firing" else None

    site.wait(firing_on_owner, "the leak firing where cdu-1 is polled")
    site.fault("cdu-1", "leak", clear=True)
    site.wait(lambda: "resolved" in pages(receiver, LEAK), "the resolve paged")
    assert pages(receiver, LEAK) == ["firing", "resolved"], site.logs()
    steady(site)


def test_a_page_waiting_for_a_hook_that_is_down_is_sent_by_the_next_leader(site: Site) -> None:
    """At least once across a leader's death: the leader hands a page to its notifier while the webhook is
    down (not listening), so the page waits in that node's outbox, pending in etcd; kill -9 of the leader;
    the webhook comes back; the new leader sends the page once, and its resolve once. The old leader, started
    again, drops what its outbox still held instead of sending it."""
    steady(site)
    receiver = site.receiver
    key = "cdu-leak/cdu-2"
    leader = site.leader()
    assert leader is not None
    failing = "hook failing, retrying with backoff"
    failures = len(site.nodes[leader].events(failing))
    receiver.stop()
    try:
        site.fault("cdu-2", "leak")

        def pending_on(node: str) -> bool:
            status = site.status(node)
            return status is not None and key in status["cluster"].get("pages_pending", [])

        site.wait(lambda: pending_on(leader), "the leak handed to the leader's notifier")
        site.wait(lambda: len(site.nodes[leader].events(failing)) > failures, "the leader's hook failing")
        site.kill(leader)
        survivors = [n for n in NODES if n != leader]
        new_leader = site.wait(lambda: (found := site.leader()) in survivors and found, "a new leader")
        # Not recorded as delivered, so the new leader hands it over again (its hook is down too).
        site.wait(lambda: pending_on(new_leader), "the leak pending on the new leader")
    finally:
        receiver.start()
    site.wait(lambda: pages(receiver, key) == ["firing"], "the leak paged by the new leader")
    site.wait(lambda: not pending_on(new_leader), "the page recorded as delivered")
    site.fault("cdu-2", "leak", clear=True)
    site.wait(lambda: "resolved" in pages(receiver, key), "the resolve paged")
    site.wait(lambda: not pending_on(new_leader), "the resolve recorded as delivered")
    # The old leader again: its outbox still holds the firing page it could not send; not sent now.
    dropped = "notification not sent: queued by an earlier run or leadership"
    seen = len(site.nodes[leader].events(dropped))
    site.start(leader)
    site.wait(lambda: len(site.nodes[leader].events(dropped)) > seen, "the old leader's queued page dropped")
    steady(site)
    assert pages(receiver, key) == ["firing", "resolved"], site.logs()


def test_a_node_cut_off_from_etcd_stops_writing_and_paging_and_keeps_polling(site: Site) -> None:
    before = steady(site)
    cut = "node-3"  # the node that reaches etcd through the test's proxies
    mine = sorted(d for d, n in before.items() if n == cut)
    assert mine, before
    device = mine[0]
    # Before the cut: a write through the owner is fenced by etcd and goes out.
    _, result = site.write(cut, device, "flow_setpoint_lpm", 450)
    assert result["outcome"] == "verified", result
    # A node that does not poll the device has no way to write to it.
    other = next(n for n in NODES if n != cut)
    _, result = site.write(other, device, "flow_setpoint_lpm", 460)
    assert result["outcome"] == "refused", result
    for proxy in site.proxies:
        proxy.cut()
    try:
        def fenced() -> dict[str, Any] | None:
            status = site.status(cut)
            return status if status is not None and not status["cluster"]["live"] else None

        # Within its lease (by its own clock) the node stops counting on it.
        site.wait(fenced, "the cut node fenced itself")
        _, result = site.write(cut, device, "flow_setpoint_lpm", 470)
        assert result["outcome"] == "refused" and result["reason"].startswith("fenced:"), result
        # Its shards are taken by the others, while it keeps polling them (telemetry is buffered and
        # published; two pollers for a while, never two writers).
        def taken() -> dict[str, str] | None:
            polled = site.polled()
            return polled if all(polled.get(d, "").count(",") == 1 and cut in polled[d] for d in mine) else None

        site.wait(taken, "the cut node's shards polled by the others too")
        taker = next(n for n in site.polled()[device].split(",") if n != cut)
        _, result = site.write(taker, device, "flow_setpoint_lpm", 480)
        assert result["outcome"] == "verified", result
        # Leadership (if it held it) went to another node the same way.
        site.wait(lambda: site.leader() not in (None, cut), "a leader other than the cut node")
    finally:
        for proxy in site.proxies:
            proxy.mend()
    # Back in touch: a new session, and rendezvous gives it its shards back.
    assert steady(site) == before


def test_a_rolling_restart_loses_no_poll_and_pages_nothing(site: Site) -> None:
    before = steady(site)
    paged = len(site.receiver.requests)
    lost = "cluster: session lost; notifications and control writes stop, polling goes on"
    with Telemetry(site.broker) as telemetry:
        site.wait(lambda: all(telemetry.times(d) for d in before), "every device's telemetry")
        # Polls a loaded host makes late are counted by the node that makes them (overruns): a gap they leave
        # in the telemetry is the host's, not the hand-over's. Counted from here, over every process.
        late: Counter[str] = Counter()
        for node in NODES:
            late.subtract(site.overruns(node))
        start_ns = time.time_ns()
        for node in NODES:
            mine = {d for d, n in before.items() if n == node}
            sessions_lost = len(site.nodes[node].events(lost))
            stops = len(site.nodes[node].events("stopped"))
            # SIGTERM: the node gives its lease back on the way out, so the others need not wait for the TTL.
            assert site.nodes[node].stop() == 0, site.nodes[node].log()
            (record,) = site.nodes[node].events("stopped")[stops:]
            late.update(record["overruns"])
            others = [n for n in NODES if n != node]
            site.wait(lambda others=others, mine=mine: (p := site.polled()) and all(p.get(d) in others for d in mine),
                      f"{node}'s shards taken over")
            # A clean stop: the session ended by the daemon, not lost.
            assert len(site.nodes[node].events(lost)) == sessions_lost, site.nodes[node].log()
            site.start(node)
            assert steady(site) == before
        end_ns = time.time_ns()
        site.wait(lambda: all(telemetry.times(d) and telemetry.times(d)[-1] > end_ns for d in before),
                  "every device's telemetry after the last restart")
        for node in NODES:  # the restarted processes, whose whole lives fall inside the window
            late.update(site.overruns(node))
        missed = {}
        for device in sorted(before):
            times = [t for t in telemetry.times(device) if start_ns - 2 * 10**9 <= t]
            missed[device] = sum(polls_lost(b - a, INTERVAL_S) for a, b in itertools.pairwise(times))
    print(f"rolling restart of {len(NODES)} nodes: polls lost per device (every {INTERVAL_S} s): {missed}; "
          f"polls started late meanwhile: {dict(late)}")
    # Make before break: a stopping node polls its devices until another node owns their shards and a while
    # longer. Any gap is one the host's load explains (a poll started late), never the hand-over.
    unexplained = {d: n - max(0, late[d]) for d, n in missed.items() if n > max(0, late[d])}
    assert unexplained == {}, (missed, dict(late))
    assert len(site.receiver.requests) == paged, [r.json() for r in site.receiver.requests[paged:]]


def test_a_paused_node_cannot_write_after_losing_its_lease(site: Site) -> None:
    """SIGSTOP past the lease (a long GC pause, a frozen VM): the others take its shards; the write it was
    asked for while paused is refused when it wakes, and nothing reaches the device."""
    before = steady(site)
    victim = "node-1"
    device = sorted(d for d, n in before.items() if n == victim)[0]
    setpoint = site.plant_value(device, "flow_setpoint_lpm")
    process = site.nodes[victim].process
    assert process is not None
    sessions_lost = len(site.nodes[victim].events("cluster: session lost; notifications and control writes stop, "
                                                  "polling goes on"))
    joined = len(site.nodes[victim].events("cluster: joined"))
    process.send_signal(signal.SIGSTOP)
    try:
        site.wait(lambda: site.polled().get(device) in [n for n in NODES if n != victim],
                  f"{device} taken over from the paused {victim}")
        # Asked while paused: the request waits in the socket's backlog until the process runs again.
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(site.write, victim, device, "flow_setpoint_lpm", setpoint + 7)
            process.send_signal(signal.SIGCONT)
            _, result = answer.result(timeout=60)
    finally:
        process.send_signal(signal.SIGCONT)
    assert result["outcome"] == "refused" and result["reason"].startswith("fenced:"), result
    assert site.plant_value(device, "flow_setpoint_lpm") == setpoint
    # Woken, it finds its lease gone: that session ends, a new one begins with a new lease, and rendezvous
    # gives it back exactly its shards. Bounds are generous (a loaded machine); each wait ends on its event.
    lost = "cluster: session lost; notifications and control writes stop, polling goes on"
    site.wait(lambda: len(site.nodes[victim].events(lost)) > sessions_lost, f"{victim}'s old session ended",
              timeout=120)
    site.wait(lambda: len(site.nodes[victim].events("cluster: joined")) > joined, f"{victim} joined again",
              timeout=120)
    assert steady(site, 180) == before


def test_a_node_that_cannot_reach_etcd_at_start_polls_every_device(site: Site) -> None:
    before = steady(site)
    etcd: EtcdCluster = site.etcd  # type: ignore[attr-defined]
    node = NODES[0]
    site.kill(node)
    for member in etcd.members:
        member.kill()
    try:
        site.start(node)

        def polls_everything() -> bool:
            status = site.status(node)
            devices = status.get("devices", {}) if status else {}
            return set(devices) == DEVICES and all(d["online"] for d in devices.values())

        # Not blind: after two lease TTLs without etcd it polls the whole site, and says so.
        site.wait(polls_everything, f"{node} polling every device while etcd is down")
        assert site.nodes[node].events(
            "cluster: etcd unreachable since start; polling every device of the site until it answers "
            "(control writes and notifications stay off)"), site.nodes[node].log()
    finally:
        for member in etcd.members:
            member.start()
        etcd.wait_healthy()
    # etcd back: the node joins and polls its own shards only, as before.
    assert steady(site) == before
