"""A site served by three `dcim run` nodes as real processes, coordinated through a real three-member etcd.

    with Site(tmp_path, etcd, broker, receiver) as site:
        site.start_all()                      # `dcim simulate` for the hall, then the three nodes
        site.status("node-1")                 # the node's /healthz ("cluster": shards, leader, lease)
        site.kill("node-2")                   # SIGKILL, as in a crash
        site.fault("cdu-1", "leak")           # through the simulators' control API

Each node has a configuration of its own (node id, state_dir, HTTP port 0 read back from its log), the same
hall otherwise. node-3 reaches etcd through a TCP proxy per member written here (`Proxy`): the test can cut
it off from the engine while it keeps running. Nothing is probed by port: the simulators and the nodes say
in their own logs when they listen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.e2e.harness import DaemonProcess, cdu_rows
from tests.helpers import free_port, wait_until_sync
from tests.receivers import HttpReceiver
from tests.servers import Mosquitto, http_json, http_request

T = TypeVar("T")

NODES = ("node-1", "node-2", "node-3")
CDUS = 6
TTL_S = 5  # the default: an etcd leader election must not cost a node its lease
TOKEN = "cluster-test-token"


INTERVAL_S = 0.5  # the CDUs' poll interval unless a site says otherwise


def hall(tmp_path: Path, cdus: int = CDUS, interval: str = f"{INTERVAL_S * 1000:g}ms") -> dict[str, Any]:
    """Liquid-cooled rows, each a CDU (Modbus, simulated) serving two racks: one shard per CDU."""
    devices, rows = cdu_rows(cdus, interval, timeout="500ms")
    return {"site": {"id": "hall-1"}, "rooms": [{"id": "dh1", "rows": rows}], "devices": devices,
            "logging": {"level": "info", "format": "json"}, "state_dir": str(tmp_path / "sim-state"),
            "http": {"enabled": False}}


class Proxy:
    """A TCP proxy to one etcd member, in a thread of its own; `cut()` stops forwarding (connections stay
    open and silent, as behind a failed switch), `mend()` forwards again. Bound to port 0 and read back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.forwarding = threading.Event()
        self.forwarding.set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"proxy-{target[1]}", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> Proxy:
        self._thread.start()
        self._ready.wait(30)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    # Cut: the bytes are swallowed, nothing answers, the connection stays up.
                    if self.forwarding.is_set():
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        self.forwarding.clear()

    def mend(self) -> None:
        self.forwarding.set()

    def close(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class Site:
    def __init__(self, tmp_path: Path, endpoints: list[str], broker: Mosquitto, receiver: HttpReceiver, *,
                 nodes: tuple[str, ...] = NODES, cdus: int = CDUS, interval: str = f"{INTERVAL_S * 1000:g}ms",
                 prefix: str = "/dcim-test", extra: dict[str, Any] | None = None) -> None:
        self.tmp = tmp_path
        self.extra = extra or {}  # more top-level sections of every node's file (the bench's influxdb)
        self.names = nodes
        self.prefix = prefix
        self.raw = hall(tmp_path, cdus, interval)
        self.endpoints = endpoints
        self.proxies = [Proxy((host, int(port))) for host, _, port in (e.rpartition(":") for e in endpoints)]
        self.broker = broker
        self.receiver = receiver
        self.control = 0
        self.simulate: DaemonProcess | None = None
        self.nodes: dict[str, DaemonProcess] = {}

    def _node_config(self, node: str) -> Path:
        workdir = self.tmp / node
        workdir.mkdir(parents=True, exist_ok=True)
        endpoints = self.endpoints if node != "node-3" else [f"127.0.0.1:{p.port}" for p in self.proxies]
        raw = dict(self.raw)
        fast = {"for": 0, "clear_after": 0}
        token = workdir / "http-token"
        token.write_text(TOKEN)
        raw.update({
            "state_dir": str(workdir / "state"),
            "http": {"enabled": True, "host": "127.0.0.1", "port": 0, "token": f"file:{token}"},
            "mqtt": {"host": self.broker.host, "port": self.broker.port, "prefix": "dcim"},
            "cluster": {"endpoints": endpoints, "node_id": node, "lease_ttl": f"{TTL_S}s", "prefix": self.prefix},
            "rules": {
                "tick": "200ms",
                # Operator writes over the HTTP API (the tests' way to exercise the write path), rate unlimited.
                "control": {"operator_writes": True, "min_interval": 0},
                "overrides": {"cdu-leak": {d["id"]: fast for d in raw["devices"]}},
                "notifications": {
                    "hooks": {"ops": {"type": "webhook", "url": self.receiver.url + "/hook", "timeout": 2}},
                    "routes": [{"match": {"severity": ["critical", "warning"]}, "hooks": ["ops"]}],
                    "group_wait": 0.1, "group_interval": 0.2, "repeat_interval": 0,
                    "retry": {"initial_backoff": 0.05, "max_backoff": 0.2},
                },
            },
        })
        raw.update(self.extra)
        path = workdir / "dcim.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def __enter__(self) -> Site:
        for proxy in self.proxies:
            proxy.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for process in [*self.nodes.values(), self.simulate]:
            if process is not None:
                process.__exit__()
        for proxy in self.proxies:
            proxy.close()

    def start_simulators(self) -> None:
        path = self.tmp / "simulate.yaml"
        path.write_text(yaml.safe_dump(self.raw, sort_keys=False))
        self.control = free_port()
        self.simulate = DaemonProcess(path, "--control-port", str(self.control), command="simulate").start()
        wait_until_sync(lambda: bool(self.simulate and self.simulate.events("simulators ready")), timeout=120,
                        interval=0.1, message=f"simulators ready\n{self.simulate.log()}")

    def start(self, node: str) -> DaemonProcess:
        process = self.nodes.get(node)
        if process is None:
            process = self.nodes[node] = DaemonProcess(self._node_config(node))
        process.start()
        return process

    def start_all(self) -> None:
        self.start_simulators()
        for node in self.names:
            self.start(node)

    def alive(self, node: str) -> bool:
        process = self.nodes.get(node)
        return process is not None and process.process is not None and process.process.poll() is None

    def kill(self, node: str) -> None:
        process = self.nodes[node]
        assert process.process is not None
        process.process.kill()
        process.process.wait()

    def http_port(self, node: str) -> int | None:
        records = self.nodes[node].events("http api listening")
        return int(records[-1]["port"]) if records else None

    def status(self, node: str) -> dict[str, Any] | None:
        """The node's /healthz, or None while it does not answer."""
        port = self.http_port(node) if self.alive(node) else None
        if port is None:
            return None
        data = http_json("GET", f"http://127.0.0.1:{port}/healthz", timeout=5, any_status=True)
        return data if isinstance(data, dict) else None

    def _metrics_lines(self, node: str) -> list[str]:
        """The node's /metrics, line by line."""
        port = self.http_port(node)
        assert port is not None
        _, body = http_request("GET", f"http://127.0.0.1:{port}/metrics", timeout=10)
        return body.decode().splitlines()

    def metrics(self, node: str) -> dict[str, float]:
        """The node's /metrics, the unlabelled dcim_cluster_* samples."""
        out = {}
        for line in self._metrics_lines(node):
            if line.startswith("dcim_cluster_") and "{" not in line:
                name, _, value = line.partition(" ")
                out[name] = float(value)
        return out

    def overruns(self, node: str) -> dict[str, int]:
        """The node's dcim_poll_overruns_total per device: polls that started more than half an interval late."""
        out = {}
        for line in self._metrics_lines(node):
            if line.startswith('dcim_poll_overruns_total{device="'):
                device = line.split('"')[1]
                out[device] = int(float(line.rsplit(" ", 1)[1]))
        return out

    def gauge(self, node: str, name: str) -> float | None:
        """An unlabelled sample of the node's /metrics (None while the node does not answer)."""
        if not self.alive(node) or self.http_port(node) is None:
            return None
        for line in self._metrics_lines(node):
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return None

    def statuses(self) -> dict[str, dict[str, Any]]:
        out = {}
        for node in self.names:
            status = self.status(node)
            if status is not None:
                out[node] = status
        return out

    def polled(self) -> dict[str, str]:
        """Device -> the live node that polls it and has it online (a device on two nodes: both named)."""
        seen: dict[str, str] = {}
        for node, status in self.statuses().items():
            for device, state in status.get("devices", {}).items():
                if state.get("online"):
                    seen[device] = f"{seen[device]},{node}" if device in seen else node
        return seen

    def leader(self) -> str | None:
        leaders = [n for n, s in self.statuses().items() if s.get("cluster", {}).get("leading")]
        return leaders[0] if len(leaders) == 1 else None

    def write(self, node: str, device: str, point: str, value: float) -> tuple[int, dict[str, Any]]:
        """An operator's write through `node`'s HTTP API (the daemon's one write path)."""
        port = self.http_port(node)
        assert port is not None
        status, body = http_request(
            "POST", f"http://127.0.0.1:{port}/api/v1/devices/{device}/points/{point}",
            json.dumps({"value": value, "user": "test"}).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}, timeout=30)
        result: dict[str, Any] = json.loads(body)
        return status, result

    def alarm(self, node: str, key: str) -> dict[str, Any] | None:
        """The alarm as `node`'s own alarm store has it (GET /api/v1/alarms/{key}), or None."""
        port = self.http_port(node)
        if port is None:
            return None
        data = http_json("GET", f"http://127.0.0.1:{port}/api/v1/alarms/{key}", timeout=5)
        alarm: dict[str, Any] | None = data.get("alarm") if isinstance(data, dict) else None
        return alarm

    def plant_value(self, device: str, point: str) -> Any:
        """A point's value in the simulated plant (the simulators' control API): what the device holds."""
        _, body = http_request("GET", f"http://127.0.0.1:{self.control}/state", timeout=10)
        return json.loads(body)["devices"][device][point]

    def fault(self, device: str, name: str, *, clear: bool = False) -> None:
        method = "DELETE" if clear else "POST"
        status, body = http_request(method, f"http://127.0.0.1:{self.control}/faults/{device}/{name}", b"{}",
                                    {"Content-Type": "application/json"})
        assert status == 200, body

    def wait(self, predicate: Callable[[], T], what: str, timeout: float = 90.0) -> T:
        """wait_until_sync, with the nodes' logs as they are when it gives up."""
        try:
            return wait_until_sync(predicate, timeout=timeout, interval=0.1, message=what)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.logs()}") from None

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{p.log()[-3000:]}" for n, p in self.nodes.items())


class Telemetry:
    """What the broker delivers of the CDUs' telemetry (topic {prefix}/{site}/cdu/<device>): each message is one
    poll, its line-protocol timestamp the poll's time. A paho client with its own network thread, so the
    synchronous tests can read it while they drive the nodes."""

    def __init__(self, broker: Mosquitto, topic: str = "dcim/+/cdu/+") -> None:
        import paho.mqtt.client as mqtt

        self.polls: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dcim-test-telemetry-{id(self):x}")
        self._client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)

    def __enter__(self) -> Telemetry:
        self._client.loop_start()
        if not self._subscribed.wait(30):
            raise AssertionError("telemetry recorder not subscribed")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        device = str(message.topic).rsplit("/", 1)[-1]
        stamps = set()
        for line in bytes(message.payload).decode(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                stamps.add(int(line.rsplit(" ", 1)[-1]))
        with self._lock:
            self.polls.setdefault(device, set()).update(stamps)

    def times(self, device: str) -> list[int]:
        with self._lock:
            return sorted(self.polls.get(device, ()))

    def around(self, device: str, at_ns: int) -> tuple[int, int] | None:
        """The last poll at or before `at_ns` and the first after it, once both were delivered."""
        times = self.times(device)
        before = [t for t in times if t <= at_ns]
        after = [t for t in times if t > at_ns]
        return (before[-1], after[0]) if before and after else None


def polls_lost(gap_ns: int, interval_s: float) -> int:
    """Polls due between two consecutive polls `gap_ns` apart that did not happen (a late poll, up to three
    quarters of an interval late, is not counted as lost)."""
    return max(0, int(gap_ns / (interval_s * 1e9) + 0.25) - 1)


def pages(receiver: HttpReceiver, key: str) -> list[str]:
    """The states the webhook was told for alarm `key`, in order of arrival."""
    states = []
    for request in receiver.requests:
        with contextlib.suppress(ValueError):
            for alarm in request.json().get("alarms", []):
                if alarm.get("key") == key:
                    states.append(str(alarm.get("state")))
    return states
