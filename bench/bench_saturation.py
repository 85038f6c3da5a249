"""Saturation: N simulated CDUs polled by `dcim run` -> rules -> MQTT, below, at and past what the daemon sustains.

Each run starts mosquitto, the Modbus devices in a process of their own (one port per device) and the
daemon (rules on, ingest off, HTTP API on for /metrics and /healthz), waits for a warm-up and then
measures for a window. A subscriber in this process (paho, QoS 1, its own thread) counts
what the broker delivers and reads each line's timestamp (the poll's) to give the latency sample ->
delivered. Printed per run:

    offered points/s     N x points per poll / interval
    delivered points/s   points in the messages received during the window
    stored points/s      with --ingest: points written to InfluxDB 1.x during the window (nan without)
    CPU us/pt            daemon CPU (user + system, /proc; with its poll workers') per delivered point
    kernel               the system part of it (syscalls; on loopback the peers' TCP receive path runs in the
                         sender's send, so the simulators', mosquitto's and InfluxDB's share of it is counted too)
    p50 / p99 latency    receive time - sample timestamp, over the messages received in the window
    first message        after the peers: seconds from the daemon's start to the first message delivered
                         (printed last), and to the delivery of every device's second poll; the window opens
                         30 s after that start, at least 20 s after that first message, and once every
                         device's second poll is in (the first round over); latency-N.tsv in the work
                         directory has the latency second by second over the window
    RSS start / end      the daemon's resident memory (and its poll workers') after the warm-up and at the end
                         of the window
    overruns             dcim_poll_overruns_total summed over devices, during the window (from /metrics)
    dropped              dcim_outbox_dropped_total during the window
    outbox               the MQTT outbox's depth at the end of the window
    peers                the CPU of the others over the window, % of one core each: the responder (sim),
                         mosquitto (mqtt), InfluxDB (db) and this process (bench: its subscriber); with --pin
                         they and this process keep to CPU 1, and cpu1 is how busy that core was (/proc/stat)

    python bench/bench_saturation.py --sizes 250 500 1000             # 60 s windows
    python bench/bench_saturation.py                                  # 1,000 devices, one 60 s window
    python bench/bench_saturation.py --quick                          # 250 devices, one 20 s window
    python bench/bench_saturation.py --find 250                       # double N until < 95 % delivered
    python bench/bench_saturation.py --sizes 500 --interval 0.2       # 5x the load of 500 at 1 s
    python bench/bench_saturation.py --tree /tmp/dcim-427cd7a ...      # run another checkout's daemon
    python bench/bench_saturation.py --sizes 1000 --py-spy 20          # py-spy top functions, 20 s
    python bench/bench_saturation.py --sizes 1000 --ingest --pin       # and the in-process ingest to InfluxDB
    python bench/bench_saturation.py --sizes 1000 --pin --no-rules     # poll -> MQTT, no rule bound
    python bench/bench_saturation.py --sizes 1000 --pin --no-rules --no-racks --profile bench-pdu-f32
                                      # poll -> MQTT alone: the issue's device (20 float32 points in one
                                      # read), nothing derived from it (no rack, no CDU's plant metrics)
    python bench/bench_saturation.py --sizes 4000 --pin --ingest --workers 1   # the polls in a poll worker
    python bench/bench_saturation.py --sizes 3000 --pin --no-racks --profile bench-pdu-f32 --answer-ms 300
                                      # devices that answer 300 ms after each request: 900 polls in flight
    python bench/bench_saturation.py --sizes 21500 --units 5 --pin --ingest   # 5 devices a port (a gateway)
    python bench/bench_saturation.py --sizes 1000 --pin --no-rules --no-racks --profile bench-pdu-f32 --meter-values
                                      # the floats at full precision, as a power meter gives them

The devices are served by a lean responder (`--serve`, in this file): the registers of each device are
encoded once from the frozen plant with the project's simulator code, and each request is answered from
them with one slice, about 10-20 us of CPU. `dcim simulate` (pymodbus' server, the plant refreshed on every
request) costs several times what the daemon spends on a poll, and on two shared cores it saturates first,
so the daemon's own limit would not be seen; `--pymodbus-sim` uses it anyway.

`--tree` puts another source tree first on the daemon's and the simulator's PYTHONPATH (a `git archive`
of an older commit): "before" and "after" figures with the same bench, broker and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import cpu_seconds, free_ports, host_probe, machine, release_ports, rss_mib, system_seconds  # noqa: E402

from tests.servers import InfluxDBv1, Mosquitto  # noqa: E402

PROFILE = "generic-cdu"
# The warm-up (see `run`): seconds after the daemon's start, and after the first message delivered.
WARM_SECONDS = 30.0
SETTLE_SECONDS = 20.0
SECOND_POLL_SECONDS = 300.0  # the longest the warm-up waits for every device's second poll after the first message
# --profile bench-pdu-f32: the hot-path issue's reference device (20 float32 points in one read), from here.
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


def config_for(n: int, interval: float, workdir: Path, mqtt_port: int, http_port: int,
               influx_url: str | None = None, rules: bool = True, workers: int = 0, with_racks: bool = True,
               profile: str = PROFILE, units: int = 1) -> Path:
    from dcim.drivers.profiles import load_profile

    kind = load_profile(profile, (PROFILE_DIR,)).kind
    if kind != "cdu" and with_racks:
        raise SystemExit(f"a profile of kind {kind} is run with --no-racks (the racks are the CDUs')")
    devices: list[dict[str, Any]] = []
    racks = []
    # --units K: K devices behind each port (unit ids 1..K, as behind a Modbus TCP gateway), their requests
    # in flight together on the one connection.
    ports = free_ports(-(-n // units))
    for i in range(1, n + 1):
        device = {"id": f"{kind}-{i}", "kind": kind, "protocol": "modbus", "host": "127.0.0.1",
                  "port": ports[(i - 1) // units], "profile": profile, "interval": f"{interval}s", "timeout": "2s",
                  "retries": 0, "simulate": True}
        if units > 1:
            device |= {"unit_id": (i - 1) % units + 1, "max_in_flight": units}
        devices.append(device)
        racks.append({"id": f"R{i}", "cooling": "liquid", "power_budget_kw": 150, "cdu": f"cdu-{i}"})
    config = {
        "site": {"id": "bench"}, "rooms": [{"id": "dh1", "rows": [{"id": "A", "racks": racks}]}] if with_racks else [],
        "devices": devices, "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "state_dir": str(workdir / f"state-{n}"), "logging": {"level": "warning", "format": "json"},
        "http": {"enabled": True, "host": "127.0.0.1", "port": http_port},
        "ingest": {"enabled": False}, "workers": workers, "profile_dirs": [str(PROFILE_DIR)],
    }
    if not rules:
        # No rule bound, no alarm: the path poll -> MQTT (rack metrics are still derived and published).
        config["rules"] = {"enabled": False}
    if influx_url is not None:
        # The in-process ingest (ingest.source: local): the publisher's journal rows, written to InfluxDB 1.x.
        config["influxdb"] = {"url": influx_url, "api": "v1", "database": "dcim"}
        config["ingest"] = {"enabled": True}
    path = workdir / f"sat-{n}.yaml"
    path.write_text(yaml.safe_dump(config))
    # The simulator's copy logs at info: its own "simulators ready" line is what the bench waits for.
    (workdir / f"sat-{n}-simulate.yaml").write_text(
        yaml.safe_dump({**config, "logging": {"level": "info", "format": "json"}}))
    return path


def meter_values(device: str, unit: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The device's float points as a power meter gives them: at full float32 precision (230.41718, not the
    plant's 230.42), each the plant's value (or, for a point the plant has none for, one drawn between 0.5
    and 500) times 1 + a part in ten thousand; seeded by the device's id, so a run and its pair agree. The
    shortest decimal of such a float32 takes 7-9 digits, where the plant's rounded values take 6 or fewer."""
    rng = random.Random(device)
    out = dict(values)
    for points in unit.tables.values():
        for point in points:
            if point.type in ("float32", "float64"):
                base = values.get(point.name)
                if not isinstance(base, float) or base == 0.0:
                    base = rng.uniform(0.5, 500.0)
                out[point.name] = base * (1 + rng.uniform(-1e-4, 1e-4))
    return out


def serve(config_path: Path, answer_ms: float = 0.0, meter: bool = False) -> None:
    """The lean Modbus responder: read requests answered from registers encoded once (see the docstring),
    each `answer_ms` after it came (0: at once). `meter`: float points at full precision (`meter_values`)."""
    from dcim.app.config import load_config
    from dcim.drivers.modbus.config import ModbusDevice
    from dcim.drivers.profiles import load_profile
    from dcim.simulators.modbus import _Unit
    from dcim.simulators.plant import Plant

    config = load_config(config_path)
    plant = Plant(config, frozen=True)
    # port -> unit id -> function -> (first address, the registers' bytes)
    values_by_port: dict[int, dict[int, dict[int, tuple[int, bytes]]]] = {}
    for device in config.devices:
        assert isinstance(device, ModbusDevice)
        unit = _Unit(plant, device, load_profile(device.profile, config.extra_profile_dirs()))
        values = plant.values(device.id)
        if meter:
            values = meter_values(device.id, unit, values)
        tables: dict[int, tuple[int, bytes]] = {}
        for function, table in ((3, "holding"), (4, "input")):
            points = unit.tables[table]
            if not points:
                continue
            low = min(p.address for p in points)
            registers = [0] * (max(p.address + p.count for p in points) - low)
            unit._refresh(table, low, registers, values)
            tables[function] = (low, struct.pack(f">{len(registers)}H", *registers))
        for function, table in ((1, "coil"), (2, "discrete")):
            if not unit.tables[table]:
                continue
            size = max(p.address + 1 for p in unit.tables[table])
            words = [0] * ((size + 15) // 16)
            unit._refresh(table, 0, words, values)
            # One byte per bit here; the answer packs them.
            tables[function] = (0, bytes((words[a // 16] >> (a % 16)) & 1 for a in range(size)))
        values_by_port.setdefault(device.port, {})[device.unit_id] = tables

    delay = answer_ms / 1000

    class Responder(asyncio.Protocol):
        def __init__(self, units: dict[int, dict[int, tuple[int, bytes]]]) -> None:
            self.units = units
            self.buffer = b""
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def send(self, frame: bytes) -> None:
            if not delay:
                self.transport.write(frame)
            elif not self.transport.is_closing():
                asyncio.get_running_loop().call_later(delay, self.transport.write, frame)

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while len(self.buffer) >= 12:
                tid, _, length, unit_id, function, address, count = struct.unpack_from(">HHHBBHH", self.buffer)
                frame_end = 6 + length
                if len(self.buffer) < frame_end:
                    return
                self.buffer = self.buffer[frame_end:]
                low, block = self.units.get(unit_id, {}).get(function, (0, b""))
                width = 1 if function in (1, 2) else 2
                start, end = width * (address - low), width * (address - low + count)
                if start < 0 or end > len(block):
                    self.send(struct.pack(">HHHBBB", tid, 0, 3, unit_id, function | 0x80, 2))
                    continue
                body = block[start:end]
                if width == 1:
                    body = bytes(sum(bit << i for i, bit in enumerate(body[j : j + 8])) for j in range(0, count, 8))
                self.send(struct.pack(">HHHBBB", tid, 0, 3 + len(body), unit_id, function, len(body)) + body)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for port, units in values_by_port.items():
            await loop.create_server(lambda u=units: Responder(u), "127.0.0.1", port, reuse_address=True)  # type: ignore[misc]
        print("simulators ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def good_fields(head: bytes) -> int:
    """The good points of a line-protocol line without its timestamp: its fields but the quality= and
    quality_reason= that a line with BAD points carries besides them."""
    fields = head.split(b" ", 1)[-1]
    return fields.count(b"=") - (2 if b"quality=" in fields else 0)


class Subscriber:
    """Counts delivered points and their latency, on paho's own network thread."""

    def __init__(self, port: int, kind: str) -> None:
        import paho.mqtt.client as mqtt

        self.kind = kind  # the devices' topics: dcim/bench/<kind>/<device>

        self.lock = threading.Lock()
        self.counting = False
        self.points = 0
        self.latencies: list[float] = []
        self.received: list[int] = []  # each latency's receive time (ns), for the trace over the window
        self.first: float | None = None  # monotonic time of the first message of the devices' topics
        # The warm-up waits for each of `expected` devices' second poll (`seen`: polls delivered a topic before
        # the window; `settled`: monotonic time the last device's second one came).
        self.expected = 0
        self.seen: dict[str, int] = {}
        self.twice = 0
        self.settled: float | None = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-sat-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        # A subscriber that drops out during a window would make the figures wrong: say so.
        self.client.on_disconnect = lambda _c, _u, _f, reason, _p: self.counting and print(
            f"subscriber disconnected during the window: {reason}", flush=True)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            print(f"subscriber refused: {reason}", flush=True)
        client.subscribe(f"dcim/bench/{self.kind}/#", qos=1)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        now = time.time_ns()
        if self.first is None:
            self.first = time.monotonic()
        if not self.counting:
            if self.settled is None and not message.payload.startswith(b"device_status"):  # a poll's, not a status
                count = self.seen[message.topic] = self.seen.get(message.topic, 0) + 1
                if count == 2:
                    self.twice += 1
                    if self.twice >= self.expected:
                        self.settled = time.monotonic()
            return
        points = 0
        newest = 0
        for line in message.payload.split(b"\n"):
            head, _, ts = line.rpartition(b" ")
            points += good_fields(head)
            newest = max(newest, int(ts))
        if points:
            with self.lock:
                self.points += points
                self.latencies.append((now - newest) / 1e9)
                self.received.append(now)

    def window(self, start: bool) -> tuple[int, list[float], list[int]]:
        with self.lock:
            self.counting = start
            points, lat, received = self.points, self.latencies, self.received
            self.points, self.latencies, self.received = 0, [], []
        return points, lat, received

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def metrics(http_port: int) -> dict[str, float]:
    """Sums over labels of the metrics the bench reports (0 when a metric does not exist in this version)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30) as response:
            text = response.read().decode()
    except OSError:
        return {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+|NaN)$", line)
        if match and match.group(3) != "NaN":
            name = match.group(1)
            if name in ("dcim_outbox_depth", "dcim_outbox_dropped_total") and 'outbox="mqtt"' not in line:
                continue
            sums[name] = sums.get(name, 0.0) + float(match.group(3))
    return sums


def stored_points(influx: InfluxDBv1 | None, points_per_poll: int, kind: str = "cdu") -> int:
    """Points in the database so far (0 without --ingest): polls stored x points per poll."""
    if influx is None:
        return 0
    rows = influx.query(f"SELECT count(flow_lpm) FROM {kind}")
    return int(rows[0]["count"]) * points_per_poll if rows else 0


def write_trace(path: Path, received: list[int], latencies: list[float]) -> None:
    """The latency second by second over the window (messages, p50, p99, max): a steady tail and one
    made of stalls (a pause of the loop, a slow batch) look alike in the window's p99, not here."""
    seconds: dict[int, list[float]] = {}
    for at, latency in zip(received, latencies, strict=True):
        seconds.setdefault(at // 1_000_000_000, []).append(latency)
    start = min(seconds, default=0)
    with path.open("w") as out:
        out.write("second\tunix\tmessages\tp50\tp99\tmax\n")
        for second in sorted(seconds):
            values = sorted(seconds[second])
            out.write(f"{second - start}\t{second}\t{len(values)}\t{percentile(values, 0.5):.3f}\t"
                      f"{percentile(values, 0.99):.3f}\t{values[-1]:.3f}\n")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(n: int, interval: float, seconds: float, workdir: Path, tree: Path | None, py_spy: float,
        pin: bool, pymodbus_sim: bool, ingest: bool = False, rules: bool = True,
        nodelay: bool = False, workers: int = 0, racks: bool = True, profile: str = PROFILE,
        answer_ms: float = 0.0, units: int = 1, meter: bool = False) -> dict[str, Any]:
    from dcim.drivers.profiles import load_profile

    kind = load_profile(profile, (PROFILE_DIR,)).kind
    points_per_poll = len(load_profile(profile, (PROFILE_DIR,)).points)
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = f"{tree}{os.pathsep}{env.get('PYTHONPATH', '')}"
    with contextlib.ExitStack() as servers:
        # Every run's ports are given back after it (the subscriber of the next run must get a file
        # descriptor below 1,024: paho's network loop uses select()).
        servers.callback(release_ports)
        # --nodelay: mosquitto as docs/deploy.md configures it (its PUBACKs not held back by Nagle).
        mqtt = servers.enter_context(Mosquitto(workdir / f"mqtt-{n}-{interval}",
                                               extra_config=["set_tcp_nodelay true"] if nodelay else []))
        influx = servers.enter_context(InfluxDBv1(workdir / f"influx-{n}-{interval}")) if ingest else None
        if pin:  # the servers and this process (its subscriber) beside the simulators, on CPU 1
            os.sched_setaffinity(0, {1})
            for server in (mqtt, influx):
                if server is not None and server._proc is not None:
                    os.sched_setaffinity(server._proc.pid, {1})
        # Connected before the ports are held (one socket each, kept open): paho's network loop uses select(),
        # which fails on a file descriptor past 1,023, and at 2,500 devices the subscriber's would be.
        subscriber = Subscriber(mqtt.port, kind)
        (http_port,) = free_ports(1)
        path = config_for(n, interval, workdir, mqtt.port, http_port, influx.url if influx is not None else None,
                          rules, workers, racks, profile, units)
        dcim = [sys.executable, "-m", "dcim.app.cli"]
        log = (workdir / f"sat-{n}.log").open("wb")
        sim_config = path.with_name(f"sat-{n}-simulate.yaml")
        cwd = tree or REPO
        # With --pin the simulators keep to CPU 1 and the daemon to CPU 0, so neither takes the other's core.
        if pymodbus_sim:
            sim_command = [*dcim, "simulate", "-c", str(sim_config), "--frozen"]
        else:
            sim_command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(sim_config),
                           "--answer-ms", str(answer_ms), *(["--meter-values"] if meter else [])]
        sim = subprocess.Popen(sim_command, cwd=REPO, stdout=log, stderr=log,
                               preexec_fn=(lambda: os.sched_setaffinity(0, {1})) if pin else None)
        try:
            deadline = time.monotonic() + 600
            while "simulators ready" not in Path(log.name).read_text(errors="replace"):
                if time.monotonic() > deadline or sim.poll() is not None:
                    tail = Path(log.name).read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"simulators did not start:\n{tail}")
                time.sleep(0.5)
            # With --workers the daemon and its poll workers may use both cores (the peers stay on CPU 1).
            cpus = {0} if pin and not workers else set(range(os.cpu_count() or 1))  # not this process' {1}
            daemon = subprocess.Popen([*dcim, "run", "-c", str(path)], cwd=cwd, env=env, stdout=log, stderr=log,
                                      preexec_fn=lambda: os.sched_setaffinity(0, cpus))
            try:
                # Warm-up: imports, the configuration, connections, the first polls. The window opens
                # WARM_SECONDS after the daemon started and once every device's second poll has been
                # delivered (the first round's backlog gone: every device due at once, each one's online
                # status ahead of the telemetry), but at least SETTLE_SECONDS after the first message. At
                # 21,500 devices the first message comes about 10 s after the start and every device's second
                # poll about 20 s after that.
                started = time.monotonic()
                subscriber.first = subscriber.settled = None
                subscriber.seen, subscriber.twice, subscriber.expected = {}, 0, n
                while True:
                    now = time.monotonic()
                    first, settled = subscriber.first, subscriber.settled
                    if daemon.poll() is not None:
                        raise RuntimeError(f"the daemon exited during the warm-up ({daemon.returncode})")
                    if first is not None and now >= max(started + min(WARM_SECONDS, 5.0 + n / 100),
                                                        first + SETTLE_SECONDS):
                        if settled is not None:
                            break
                        if now - first > SECOND_POLL_SECONDS:
                            print(f"{n - subscriber.twice} of {n} devices' second poll not delivered "
                                  f"{SECOND_POLL_SECONDS:.0f} s after the first message: measuring anyway",
                                  flush=True)
                            break
                    if now - started > 600:
                        raise RuntimeError("nothing delivered within 600 s of the daemon's start")
                    time.sleep(0.2)
                settled_after = (subscriber.settled or now) - started
                subscriber.seen = {}
                startup = (first or now) - started
                subscriber.window(True)
                stored0 = stored_points(influx, points_per_poll, kind)
                m0, cpu0, rss0, t0 = metrics(http_port), tree_cpu(daemon.pid), tree_rss(daemon.pid), time.monotonic()
                sys0 = system_seconds(daemon.pid)
                peers = {name: pid for name, pid in (
                    ("sim", sim.pid), ("mqtt", mqtt._proc.pid if mqtt._proc else None),
                    ("db", influx._proc.pid if influx is not None and influx._proc else None),
                    ("bench", os.getpid())) if pid is not None}
                peers0 = {name: cpu_seconds(pid) for name, pid in peers.items()}
                own0 = cpu_seconds(daemon.pid)
                busy0 = cpu_busy(1)
                spy = None
                if py_spy:
                    spy = subprocess.Popen(
                        [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(daemon.pid), "-d",
                         str(int(py_spy)), "-r", "50", "-f", "raw", "-o", str(workdir / f"spy-{n}.txt")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(seconds)
                cpu1, sys1, t1 = tree_cpu(daemon.pid), system_seconds(daemon.pid), time.monotonic()
                peers1 = {name: cpu_seconds(peers[name]) for name in peers0}
                if workers:  # the daemon's process alone, then its poll workers
                    peers0["daemon"], peers1["daemon"] = own0, cpu_seconds(daemon.pid)
                    peers0["workers"], peers1["workers"] = cpu0 - own0, cpu1 - peers1["daemon"]
                busy1 = cpu_busy(1)
                points, latencies, received = subscriber.window(False)
                write_trace(workdir / f"latency-{n}.tsv", received, latencies)
                stored1 = stored_points(influx, points_per_poll, kind)
                m1, rss1 = metrics(http_port), tree_rss(daemon.pid)
                for route in ("metrics", "healthz"):  # the whole of both, kept beside the log for a look
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/{route}", timeout=30) as got:
                            (workdir / f"{route}-{n}.txt").write_bytes(got.read())
                    except OSError as err:
                        (workdir / f"{route}-{n}.txt").write_text(f"{err}\n")
                if spy is not None:
                    spy.wait()
                    print(top_functions(workdir / f"spy-{n}.txt"), flush=True)
            finally:
                daemon.terminate()
                daemon.wait(60)
        finally:
            subscriber.close()
            sim.terminate()
            sim.wait(60)
    span = t1 - t0
    return {
        "devices": n, "interval": interval,
        "offered": n * points_per_poll / interval,
        "delivered": points / span,
        "stored": (stored1 - stored0) / span if ingest else float("nan"),
        "cpu_us": (cpu1 - cpu0) / points * 1e6 if points else float("nan"),
        "cpu_pct": (cpu1 - cpu0) / span * 100,
        "sys_us": (sys1 - sys0) / points * 1e6 if points else float("nan"),
        "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
        "rss0": rss0, "rss1": rss1,
        "overruns": m1.get("dcim_poll_overruns_total", 0.0) - m0.get("dcim_poll_overruns_total", 0.0),
        "dropped": m1.get("dcim_outbox_dropped_total", 0.0) - m0.get("dcim_outbox_dropped_total", 0.0),
        "outbox": m1.get("dcim_outbox_depth", float("nan")),
        "peers": {name: (peers1[name] - peers0[name]) / span * 100 for name in peers0},
        "cpu1": (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1) * 100,
        "startup": startup,
        "settled": settled_after,
    }


def children(pid: int) -> list[int]:
    """The daemon's child processes (its poll workers)."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def tree_cpu(pid: int) -> float:
    """CPU seconds of the daemon and its poll workers (a worker restarted in the window would be missed)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def tree_rss(pid: int) -> float:
    return rss_mib(pid) + sum(rss_mib(child) for child in children(pid))


def cpu_busy(cpu: int) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU since boot, from /proc/stat (busy: all but idle and iowait)."""
    for row in Path("/proc/stat").read_text().splitlines():
        if row.startswith(f"cpu{cpu} "):
            fields = [int(f) for f in row.split()[1:]]
            return sum(fields) - fields[3] - fields[4], sum(fields)
    return 0, 1


def top_functions(raw: Path, limit: int = 15) -> str:
    """py-spy's raw (collapsed) stacks -> the functions with the most samples, self and total."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    lines = [f"py-spy: {samples} samples; top functions by own samples (own %, total %)"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:limit]:
        lines.append(f"  {100 * count / samples:5.1f} % {100 * total[frame] / samples:5.1f} %  {frame}")
    return "\n".join(lines)


HEADER = (f"{'N':>6} {'interval':>8} {'offered/s':>10} {'delivered/s':>11} {'stored/s':>9} {'CPU us/pt':>9} "
          f"{'kernel':>6} {'CPU':>6} {'p50 s':>7} {'p99 s':>7} {'RSS MiB':>13} {'overruns':>9} {'dropped':>8} "
          f"{'outbox':>7}")


def line(r: dict[str, Any]) -> str:
    return (f"{r['devices']:>6.0f} {r['interval']:>8g} {r['offered']:>10.0f} {r['delivered']:>11.0f} "
            f"{r['stored']:>9.0f} "
            f"{r['cpu_us']:>9.1f} {r['sys_us']:>6.1f} {r['cpu_pct']:>5.0f}% {r['p50']:>7.2f} {r['p99']:>7.2f} "
            f"{r['rss0']:>6.0f}->{r['rss1']:<6.0f} {r['overruns']:>9.0f} {r['dropped']:>8.0f} {r['outbox']:>7.0f}"
            f"  peers " + " ".join(f"{name} {pct:.0f}%" for name, pct in r["peers"].items())
            + f", cpu1 {r['cpu1']:.0f}%, first message {r['startup']:.1f} s after start"
            + f", every device's second {r['settled']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[])
    parser.add_argument("--find", type=int, metavar="N0",
                        help="from N0, double N until less than 95 %% of the offered points are delivered; "
                             "then run 2x and 5x the last N that kept up")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tree", type=Path, help="run the daemon and simulators from this source tree")
    parser.add_argument("--py-spy", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--pin", action="store_true", help="daemon on CPU 0, simulators on CPU 1")
    parser.add_argument("--pymodbus-sim", action="store_true", help="serve the devices with `dcim simulate`")
    parser.add_argument("--ingest", action="store_true",
                        help="the in-process ingest on, into InfluxDB 1.x (beside the simulators with --pin)")
    parser.add_argument("--no-rules", action="store_true",
                        help="rules.enabled false: poll -> MQTT (rack metrics still derived and published)")
    parser.add_argument("--profile", default=PROFILE,
                        help="the devices' profile: generic-cdu (24 points in 3 reads, the default) or "
                             "bench-pdu-f32 (20 float32 points in one read, the hot-path issue's device; with "
                             "--no-racks)")
    parser.add_argument("--no-racks", action="store_true",
                        help="no rooms and racks: nothing is derived from the readings (with --no-rules: poll -> "
                             "MQTT alone)")
    parser.add_argument("--nodelay", action="store_true",
                        help="mosquitto with set_tcp_nodelay true, as docs/deploy.md configures it")
    parser.add_argument("--workers", type=int, default=0,
                        help="the daemon's poll workers (workers: N); with --pin the daemon and its workers are "
                             "not pinned, the peers stay on CPU 1")
    parser.add_argument("--workdir", type=Path, help="keep configurations and logs here (default: a temporary one)")
    parser.add_argument("--answer-ms", type=float, default=0.0, metavar="MS",
                        help="the lean responder answers each request this long after it came (slow devices)")
    parser.add_argument("--units", type=int, default=1, metavar="K",
                        help="K devices behind each port (unit ids 1..K, as behind a gateway; at most 16)")
    parser.add_argument("--meter-values", action="store_true",
                        help="the lean responder gives float points at full float32 precision, as a power meter "
                             "does (230.41718), not the plant's rounded values (230.42)")
    parser.add_argument("--quick", action="store_true", help="without --sizes or --find: 250 devices, a 20 s window")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.sizes and not args.find:
        # Neither: one run (what `make bench` gives), 1,000 devices, or 250 for 20 s with --quick.
        args.sizes = [250] if args.quick else [1000]
        if args.quick:
            args.seconds = 20.0
    if args.serve:
        serve(args.serve, args.answer_ms, args.meter_values)
        return
    print(f"machine: {machine()}; load average at start: {os.getloadavg()}; host probe {host_probe():.1f} us")
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="dcim-sat-") as tmp:
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            tmp = str(args.workdir)
        def one(n: int) -> dict[str, Any]:
            r = run(n, args.interval, args.seconds, Path(tmp), args.tree, args.py_spy, args.pin, args.pymodbus_sim,
                    args.ingest, not args.no_rules, args.nodelay, args.workers, not args.no_racks,
                    args.profile, args.answer_ms, args.units, args.meter_values)
            print(line(r), f"  load {os.getloadavg()[0]:.1f}", flush=True)
            return r

        for n in args.sizes:
            one(n)
        if args.find:
            n, kept_up = args.find, 0
            while True:
                r = one(n)
                if r["delivered"] < 0.95 * r["offered"]:
                    break
                kept_up, n = n, n * 2
            if kept_up:
                print(f"saturation: between {kept_up} and {n} devices at {args.interval:g} s", flush=True)
                for factor in (2, 5):
                    one(kept_up * factor)


if __name__ == "__main__":
    main()
