"""Two source trees' daemons side by side: the same N devices each, on the same core at the same time.

`bench_saturation.py --tree` runs one tree's daemon after the other's. On the 2-vCPU VMs of BENCHMARKS.md
the CPU a point costs moves by 15-25 % from one run to the next (and from one hour to the next) with the
machine's neighbours, more than most changes to the hot path are worth. Here both daemons run at once,
pinned to CPU 0, each polling its own N devices (the same profile and values) and publishing to the same
mosquitto; their peers (one lean responder each, mosquitto, this process' subscriber) keep to CPU 1. What
slows the machine down slows both: the ratio of their CPU per point is what this measures, window by window.

Each daemon is `bench_saturation.py`'s configuration (`config_for`), its site renamed so that its topics are
its own (dcim/a/..., dcim/b/...). After the warm-up (both daemons' first messages, then SETTLE seconds),
`--windows` windows of `--seconds` each; per window, per daemon: delivered points/s and CPU us a point
(user + system, /proc), and B's CPU per point over A's. Then the mean and spread of that ratio.

    python bench/bench_ab.py --a /tmp/before --b /tmp/after --sizes 1000 \\
        --no-rules --no-racks --profile bench-pdu-f32 --meter-values

`--a` and `--b` are source trees (a `git archive` of a commit each; by default both this checkout, which
measures the bench's own spread), put first on the daemons' PYTHONPATH. `--swap` adds a second round with
the trees' configurations (ports, site names, state directories) exchanged and B's daemon started first, so
that nothing but the code differs on average. With one tree as A and B (on the machine of BENCHMARKS.md,
2026-12-05), B over A was 0.981-0.995 in one round of 4 windows and 0.996-1.013 in a swapped run of 6: the
ratio holds within about 2 % of 1 where one daemon's CPU per point moved by 50 % over the same minutes
(5.3-8.0 us): a difference of more than 2 % is the code's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_saturation import PROFILE, PROFILE_DIR, config_for, good_fields  # noqa: E402
from benchlib import cpu_seconds, free_ports, host_probe, machine, release_ports  # noqa: E402

from tests.servers import Mosquitto  # noqa: E402

SETTLE_SECONDS = 20.0
SITES = ("a", "b")


class Counter:
    """Points delivered per site (the topics' second level), on paho's own network thread."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.lock = threading.Lock()
        self.points = dict.fromkeys(SITES, 0)
        self.first: dict[str, float] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-ab-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda client, _u, _f, _r, _p: client.subscribe("dcim/+/+/+", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        site = message.topic.split("/", 2)[1]
        if site not in self.points or message.payload.startswith(b"device_status"):
            return
        points = sum(good_fields(line.rpartition(b" ")[0]) for line in message.payload.split(b"\n"))
        with self.lock:
            self.points[site] += points
            self.first.setdefault(site, time.monotonic())

    def take(self) -> dict[str, int]:
        with self.lock:
            points, self.points = self.points, dict.fromkeys(SITES, 0)
        return points

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def configs(n: int, interval: float, workdir: Path, mqtt_port: int, args: argparse.Namespace) -> list[Path]:
    """One daemon configuration per site (its own devices, ports, HTTP port and state directory)."""
    paths = []
    for site in SITES:
        directory = workdir / site
        directory.mkdir(parents=True, exist_ok=True)
        (http_port,) = free_ports(1)
        path = config_for(n, interval, directory, mqtt_port, http_port, None, not args.no_rules, 0,
                          not args.no_racks, args.profile)
        for name in (path, path.with_name(f"sat-{n}-simulate.yaml")):
            config = yaml.safe_load(name.read_text())
            config["site"]["id"] = site
            name.write_text(yaml.safe_dump(config))
        paths.append(path)
    return paths


def run(args: argparse.Namespace, n: int, workdir: Path) -> list[float]:
    """The windows of one size; B's CPU per point over A's in each (swapped pairs: in each pair)."""
    trees = {"a": Path(args.a).resolve(), "b": Path(args.b).resolve()}
    ratios: list[float] = []
    with contextlib.ExitStack() as stack:
        stack.callback(release_ports)
        mqtt = stack.enter_context(Mosquitto(workdir / f"mqtt-{n}", extra_config=["set_tcp_nodelay true"]))
        os.sched_setaffinity(0, {1})
        if mqtt._proc is not None:
            os.sched_setaffinity(mqtt._proc.pid, {1})
        counter = Counter(mqtt.port)
        stack.callback(counter.close)
        paths = configs(n, args.interval, workdir, mqtt.port, args)
        rounds = [dict(zip(SITES, paths, strict=True))]
        if args.swap:
            # B's daemon started first, on A's configuration.
            rounds.append({"b": paths[0], "a": paths[1]})
        # The responders: one per configuration, for the whole run, on CPU 1.
        for path in paths:
            log = (path.parent / "sim.log").open("wb")
            sim = subprocess.Popen(
                [sys.executable, str(REPO / "bench" / "bench_saturation.py"), "--serve",
                 str(path.with_name(f"sat-{n}-simulate.yaml")), *(["--meter-values"] if args.meter_values else [])],
                cwd=REPO, stdout=log, stderr=log, preexec_fn=lambda: os.sched_setaffinity(0, {1}))
            stack.callback(sim.wait, 60)
            stack.callback(sim.terminate)
            deadline = time.monotonic() + 600
            while "simulators ready" not in Path(log.name).read_text(errors="replace"):
                if time.monotonic() > deadline or sim.poll() is not None:
                    raise RuntimeError(f"simulators did not start: {Path(log.name).read_text()[-2000:]}")
                time.sleep(0.5)
        for index, placed in enumerate(rounds):
            # placed: tree name -> the configuration it runs (in the second round of --swap, the other's).
            daemons: dict[str, subprocess.Popen[bytes]] = {}
            site_of = {tree: yaml.safe_load(path.read_text())["site"]["id"] for tree, path in placed.items()}
            try:
                for tree, path in placed.items():
                    env = dict(os.environ, PYTHONPATH=f"{trees[tree]}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
                    log = (path.parent / f"daemon-{tree}-{index}.log").open("wb")
                    daemons[tree] = subprocess.Popen(
                        [sys.executable, "-m", "dcim.app.cli", "run", "-c", str(path)], cwd=trees[tree], env=env,
                        stdout=log, stderr=log, preexec_fn=lambda: os.sched_setaffinity(0, {0}))
                counter.first.clear()
                started = time.monotonic()
                while (len(counter.first) < len(SITES)
                       or time.monotonic() < max(counter.first.values()) + SETTLE_SECONDS):
                    if any(d.poll() is not None for d in daemons.values()):
                        raise RuntimeError("a daemon exited during the warm-up")
                    if time.monotonic() - started > 600:
                        raise RuntimeError("nothing delivered within 600 s")
                    time.sleep(0.2)
                counter.take()
                cpu = {tree: cpu_seconds(d.pid) for tree, d in daemons.items()}
                for window in range(args.windows):
                    time.sleep(args.seconds)
                    points = counter.take()
                    now = {tree: cpu_seconds(d.pid) for tree, d in daemons.items()}
                    us = {tree: (now[tree] - cpu[tree]) / max(points[site_of[tree]], 1) * 1e6 for tree in daemons}
                    rate = {tree: points[site_of[tree]] / args.seconds for tree in daemons}
                    cpu = now
                    ratio = us["b"] / us["a"]
                    ratios.append(ratio)
                    print(f"{n:>6} {index + 1:>5} {window + 1:>6} {rate['a']:>10.0f} {us['a']:>9.2f} "
                          f"{rate['b']:>10.0f} {us['b']:>9.2f} {ratio:>8.3f}", flush=True)
            finally:
                for daemon in daemons.values():
                    daemon.terminate()
                for daemon in daemons.values():
                    daemon.wait(60)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", default=str(REPO), help="source tree of daemon A, the reference (default: this "
                        "checkout)")
    parser.add_argument("--b", default=str(REPO), help="source tree of daemon B (default: this checkout: with A's "
                        "default, the bench's own spread)")
    parser.add_argument("--sizes", type=int, nargs="+", help="devices per daemon (default 1000)")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, help="one window (default 20)")
    parser.add_argument("--windows", type=int, help="windows a round (default 6)")
    parser.add_argument("--quick", action="store_true", help="250 devices each, 3 windows of 10 s")
    parser.add_argument("--swap", action="store_true", help="a second round with the configurations exchanged")
    parser.add_argument("--no-rules", action="store_true")
    parser.add_argument("--no-racks", action="store_true")
    parser.add_argument("--profile", default=PROFILE)
    parser.add_argument("--meter-values", action="store_true")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    args.sizes = args.sizes or ([250] if args.quick else [1000])
    args.seconds = args.seconds or (10.0 if args.quick else 20.0)
    args.windows = args.windows or (3 if args.quick else 6)
    if args.profile != PROFILE and not args.no_racks:
        parser.error("a profile other than generic-cdu is run with --no-racks")
    print(f"machine: {machine()}; load average at start: {os.getloadavg()}; host probe {host_probe():.1f} us; "
          f"A = {args.a}, B = {args.b}; "
          f"profile {args.profile} from {PROFILE_DIR if args.profile != PROFILE else 'the project'}")
    print(f"{'N':>6} {'round':>5} {'window':>6} {'A pts/s':>10} {'A us/pt':>9} {'B pts/s':>10} {'B us/pt':>9} "
          f"{'B / A':>8}", flush=True)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dcim-ab-") as tmp:
        for n in args.sizes:
            workdir = args.workdir / str(n) if args.workdir else Path(tmp) / str(n)
            ratios = run(args, n, workdir)
            spread = statistics.stdev(ratios) if len(ratios) > 1 else float("nan")
            print(f"{n:>6} B / A over {len(ratios)} windows: mean {statistics.mean(ratios):.3f}, "
                  f"median {statistics.median(ratios):.3f}, stdev {spread:.3f}, "
                  f"min {min(ratios):.3f}, max {max(ratios):.3f}", flush=True)


if __name__ == "__main__":
    main()
