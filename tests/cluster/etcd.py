"""A real etcd cluster for the tests: three members (Debian's etcd-server 3.4) on loopback, each in a temp dir.

etcd cannot bind port 0 and report what it got, so each member's client and peer ports are chosen and held
the way tests/servers.py holds ports for the other servers (``hold_port``, from the first start to close()),
and the whole cluster's static `--initial-cluster` names them. A member counts as started once its own
process listens on both ports; the cluster counts as ready once every running member answers `/health`
with {"health":"true"} (etcd's own readiness: it has a raft leader and serves reads).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.servers import ServerError, ServerProcess, http_json, port_accepts

_HEALTH_TIMEOUT_S = 60.0


class EtcdMember(ServerProcess):
    name = "etcd"
    binary_name = "etcd"
    package = "etcd-server"

    def __init__(self, workdir: Path, member: str, **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.member = member
        self.peer_port = 0
        self.initial_cluster = ""
        self.token = ""
        self.log_path = self.workdir / f"{member}.log"

    def _allocate_ports(self) -> None:
        self.port = self._hold()
        self.peer_port = self._hold()

    def allocate(self) -> None:
        """Choose and hold both ports before any member starts: every member must know every peer URL."""
        self._release()
        self._allocate_ports()

    def ports(self) -> list[int]:
        return [self.port, self.peer_port]

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def _command(self) -> list[str]:
        client = f"http://{self.host}:{self.port}"
        return [
            self.binary, "--name", self.member, "--data-dir", str(self.workdir / "data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", self.token,
            # Loopback: a short heartbeat and election timeout keep a member's loss short without flapping.
            "--heartbeat-interval", "100", "--election-timeout", "1000",
            "--log-level", "warn", "--logger", "zap",
        ]

    def _probe(self) -> bool:
        return port_accepts(self.host, self.port)

    def healthy(self) -> bool:
        data = http_json("GET", f"http://{self.endpoint}/health", timeout=2.0)
        return isinstance(data, dict) and data.get("health") == "true"

    def status(self) -> dict[str, Any] | None:
        """etcd's Maintenance.Status through its JSON gateway: this member's id and the raft leader's."""
        data = http_json("POST", f"http://{self.endpoint}/v3/maintenance/status", b"{}",
                         {"Content-Type": "application/json"}, timeout=2.0)
        return data if isinstance(data, dict) else None


class EtcdCluster:
    """Three members started together (each one alone has no quorum, so none is 'ready' before the others)."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.members = [EtcdMember(workdir / f"etcd-{n}", f"m{n}") for n in range(size)]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self) -> EtcdCluster:
        for member in self.members:
            member.allocate()
        initial = ",".join(f"{m.member}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial
            member.token = f"dcim-test-{id(self)}"
            # Started with the ports held above: ServerProcess.start() allocates only on a port of 0.
            member.start()
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = _HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            running = [m for m in self.members if m.running]
            if running and all(m.healthy() for m in running):
                return
            if time.monotonic() > deadline:
                raise ServerError("etcd cluster not healthy:\n" + "\n".join(m.log_tail(5) for m in self.members))
            time.sleep(0.1)

    def leader(self) -> EtcdMember | None:
        """The member that is the raft leader now, as the running members report it."""
        for member in self.members:
            status = member.status() if member.running else None
            if status is not None and status.get("leader") == status.get("header", {}).get("member_id"):
                return member
        return None

    def close(self) -> None:
        for member in self.members:
            member.close()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
