"""Real servers for the tests: Mosquitto, InfluxDB 1.x and VictoriaMetrics, each in its own temp dir.

Every server is a child process on a loopback port of its own, its output in ``<workdir>/<name>.log``:

    with Mosquitto() as broker:          # start() on enter, close() on exit
        broker.host, broker.port
        broker.restart()                 # same port: clients see a real outage and a real recovery
        await broker.arestart()          # the same without blocking the event loop

These servers cannot bind port 0 and report what they got, so a port is chosen and held (``hold_port``:
bound with SO_REUSEADDR, never listening, so no bind(0) or outgoing connection elsewhere gets it, from the
first start to close(), outages included), and the server is started on it. It counts as started only once
the kernel shows a listening socket on that port held by the server's own process (``/proc/net/tcp`` and
``/proc/<pid>/fd``) and it answers there. Someone else listening on the port (a connection would reach them,
not us) or an exit during start-up is a conflict: the first start retries with other ports. A server that
does not come up within its deadline raises ServerError with the tail of its log. ``stop()`` sends SIGTERM,
then SIGKILL after a timeout.
Children are started through ``setpriv --pdeathsig KILL`` when available, so a test run that is killed
hard does not leave servers behind holding ports. The kernel ties that to the *thread* that started the
server, so start servers from a thread that outlives them (the main thread, as fixtures and ``astart()``
do), not from ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

# /usr/sbin is not on a normal user's PATH on Debian, and mosquitto lives there.
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
_POLL_INTERVAL_S = 0.02
_START_ATTEMPTS = 5  # a chosen port can be taken by someone else before the server binds it: try others


class ServerError(RuntimeError):
    """A test server failed to start, stop or answer."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0), released on return.

    Only a candidate: someone else may bind it before you do. Servers of our own bind port 0 and report the
    port they got; external servers here use it as a candidate and check who bound it (``listening_pids``).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def hold_port(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to ``port`` (0: the kernel's pick) with SO_REUSEADDR and never listening.

    While it is open the kernel gives its port to no other bind(0) and no outgoing connection, and a server
    that binds the port with SO_REUSEADDR (mosquitto, Go servers, asyncio) still gets it and listens: the
    port is held for that server, across its restarts too, with no window in which it is free.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def find_binary(name: str) -> str | None:
    """The absolute path of an executable on PATH or in the sbin directories, or None."""
    return shutil.which(name) or shutil.which(name, path=_SBIN_PATH)


def _socket_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets (IPv4 and IPv6) listening on ``port``, from the kernel's tables."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; field 9 is the inode.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listening_pids(port: int, candidates: Sequence[int]) -> set[int]:
    """Which of the ``candidates`` processes hold a TCP socket listening on ``port`` (Linux /proc)."""
    inodes = {f"socket:[{inode}]" for inode in _socket_inodes(port)}
    found: set[int] = set()
    if not inodes:
        return found
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    found.add(pid)
                    break
            except OSError:
                continue
    return found


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_request(
    method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """A blocking HTTP call that returns (status, body) for every status instead of raising on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def http_json(
    method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
    timeout: float = 10.0, *, any_status: bool = False,
) -> Any:
    """The JSON body of a blocking HTTP call, or None when the server does not answer, answers with a status
    other than 200 (unless `any_status`: a /healthz answers 503 with the same report) or with no JSON."""
    try:
        status, answer = http_request(method, url, body, headers, timeout)
    except OSError:
        return None
    if status != 200 and not any_status:
        return None
    try:
        return json.loads(answer)
    except ValueError:
        return None


class ServerProcess:
    """One server process on fixed ports (chosen at first start) with a log file in its own directory."""

    name: ClassVar[str]
    binary_name: ClassVar[str]
    package: ClassVar[str]  # the Debian package that provides binary_name
    host = "127.0.0.1"

    def __init__(
        self, workdir: Path | None = None, *, binary: str | None = None, start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        found = binary or find_binary(self.binary_name)
        if found is None:
            raise ServerError(
                f"{self.binary_name} not found: install the Debian package {self.package!r} "
                "(scripts/install-test-deps.sh)"
            )
        self.binary = found
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"dcim-{self.name}-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.port = 0
        self._holds: list[socket.socket] = []  # holding our ports while the server is down (hold_port)
        self.startup_seconds: float | None = None  # of the last start, for the benchmark notes
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # What each server defines.

    def _allocate_ports(self) -> None:
        self.port = self._hold()

    def _hold(self) -> int:
        """A port held for this server from now until close(): restarts find it still theirs."""
        sock = hold_port(self.host)
        self._holds.append(sock)
        port: int = sock.getsockname()[1]
        return port

    def _release(self) -> None:
        holds, self._holds = self._holds, []
        for sock in holds:
            sock.close()

    def ports(self) -> list[int]:
        """Every TCP port this server must listen on (checked to be held by its own process)."""
        return [self.port]

    def _prepare(self) -> None:
        """Write the configuration for the current ports."""

    def _command(self) -> list[str]:
        raise ServerError(f"{type(self).__name__} does not define its command")

    def _probe(self) -> bool:
        """True once the server answers."""
        return port_accepts(self.host, self.port)

    def _after_start(self) -> None:
        """Work that needs the server up, such as creating a database (blocking, short)."""

    # Lifecycle.

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        """Start and wait until ready. The first start picks the ports (other ones on a conflict); later
        starts reuse them, so clients see the same server come back."""
        first = self.port == 0
        for _ in range(_START_ATTEMPTS if first else 1):
            began = time.monotonic()
            self._spawn(fresh_ports=first)
            while not self._check_ready(began):
                time.sleep(_POLL_INTERVAL_S)
            if self.running:
                self._after_start()
                self.startup_seconds = time.monotonic() - began
                return self
        raise self._failure("did not get its port(s)" if first else "exited during start-up")

    async def astart(self) -> Self:
        """start() without blocking the event loop while the server comes up."""
        first = self.port == 0
        for _ in range(_START_ATTEMPTS if first else 1):
            began = time.monotonic()
            self._spawn(fresh_ports=first)
            # A child process's readiness has no event to await: poll it against a deadline.
            while not await asyncio.to_thread(self._check_ready, began):  # noqa: ASYNC110
                await asyncio.sleep(_POLL_INTERVAL_S)
            if self.running:
                await asyncio.to_thread(self._after_start)
                self.startup_seconds = time.monotonic() - began
                return self
        raise self._failure("did not get its port(s)" if first else "exited during start-up")

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL. Safe to call when not running."""
        proc = self._begin_stop()
        if proc is None:
            return
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(self.stop_timeout)

    async def astop(self) -> None:
        proc = self._begin_stop()
        if proc is None:
            return
        deadline = time.monotonic() + self.stop_timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                deadline = time.monotonic() + self.stop_timeout
            await asyncio.sleep(_POLL_INTERVAL_S)

    def kill(self) -> None:
        """SIGKILL, as in a crash: no graceful shutdown, nothing flushed."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(self.stop_timeout)
        self._proc = None
        self._paused = False

    def restart(self) -> Self:
        """Stop and start again on the same port(s)."""
        self.stop()
        return self.start()

    async def arestart(self) -> Self:
        await self.astop()
        return await self.astart()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections (kernel backlog) but nothing answers, as in a hang."""
        if self._proc is None or self._proc.poll() is not None:
            raise ServerError(f"{self.name} is not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._proc is not None and self._paused:
            self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop, release the ports and remove the work directory if this object made it."""
        self.stop()
        self._release()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid} dir={self.workdir}>"

    # Internals.

    def _spawn(self, *, fresh_ports: bool) -> None:
        if self.running:
            raise ServerError(f"{self.name} is already running (pid {self.pid})")
        if fresh_ports:
            self._release()
            self._allocate_ports()
        self._prepare()
        command = self._command()
        setpriv = find_binary("setpriv")
        if setpriv is not None:
            command = [setpriv, "--pdeathsig", "KILL", "--", *command]
        with self.log_path.open("ab") as log:
            log.write(f"--- start: {' '.join(command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, env=self._environment(), start_new_session=True,
            )

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def owns_ports(self) -> bool:
        """True when every port of ``ports()`` has a listening socket held by this server's own process."""
        pid = self.pid
        return pid is not None and all(pid in listening_pids(port, [pid]) for port in self.ports())

    def _check_ready(self, began: float) -> bool:
        """True when ready or stopped (the caller tells which: a conflict stops the server); raises once the
        deadline has passed.

        A server is ready once its own process holds its ports and it answers there. A port held by someone
        else while ours is still starting is a conflict: we stop ours, and start() tries other ports.
        """
        if not self.running:
            return True
        if self.owns_ports():
            if self._probe():
                return True
        elif any(_socket_inodes(port) and self.pid not in listening_pids(port, self._family())
                 for port in self.ports()):
            self._log_note(f"a port of {self.ports()} is held by another process: trying other ports")
            self.stop()
            return True
        if time.monotonic() - began > self.start_timeout:
            self.stop()
            raise self._failure(f"not ready after {self.start_timeout:.0f} s")
        return False

    def _family(self) -> list[int]:
        """The server's pid and its children's (a server that forks a listener still owns its port)."""
        pid = self.pid
        if pid is None:
            return []
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        return [pid, *(int(c) for c in children)]

    def _log_note(self, note: str) -> None:
        with self.log_path.open("a") as log:
            log.write(f"--- {note}\n")

    def _begin_stop(self) -> subprocess.Popen[bytes] | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            if self._paused:
                proc.send_signal(signal.SIGCONT)
            proc.terminate()
        self._paused = False
        return proc

    def _failure(self, what: str) -> ServerError:
        return ServerError(
            f"{self.name} ({self.binary}) {what}; port {self.port}; log {self.log_path}:\n{self.log_tail()}"
        )


class Mosquitto(ServerProcess):
    """Mosquitto 2 on loopback, anonymous, MQTT 3.1.1 and 5 (shared subscriptions are on by default).

    ``persistence=True`` keeps sessions, queued QoS 1 messages and retained messages across restart(),
    as a broker with a disk would; the default forgets them, as a broker without one does.
    """

    name = "mosquitto"
    binary_name = "mosquitto"
    package = "mosquitto"

    def __init__(
        self, workdir: Path | None = None, *, persistence: bool = False, extra_config: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(workdir, **kwargs)
        self.persistence = persistence
        self.extra_config = list(extra_config)
        self.config_path = self.workdir / "mosquitto.conf"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _prepare(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Outage tests queue more than the default 1000 QoS 1 messages per session.
            "max_queued_messages 100000",
            # As docs/deploy.md advises: MQTT 5 clients are told it as the broker's Receive Maximum, which the
            # publisher keeps to (mosquitto's default, 20, makes its throughput bound by round trips).
            "max_inflight_messages 1000",
            # Run as root, mosquitto drops to the 'mosquitto' user, which cannot write our temp dir.
            *(["user root"] if os.geteuid() == 0 else []),
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]


class InfluxDBv1(ServerProcess):
    """InfluxDB 1.x (``influxd`` 1.6): HTTP API on one free port, the RPC bind address on another.

    ``database`` is created at every start (CREATE DATABASE is idempotent).
    """

    name = "influxdb"
    binary_name = "influxd"
    package = "influxdb"

    def __init__(self, workdir: Path | None = None, *, database: str = "dcim", **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.database = database
        self.rpc_port = 0
        self.config_path = self.workdir / "influxdb.conf"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _allocate_ports(self) -> None:
        self.port = self._hold()
        self.rpc_port = self._hold()  # held at once: never the same as port

    def ports(self) -> list[int]:
        return [self.port, self.rpc_port]

    def _prepare(self) -> None:
        d = self.workdir
        self.config_path.write_text(
            f"""reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
  logging-enabled = false
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  log-enabled = false
  flux-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
[logging]
  level = "warn"
"""
        )

    def _environment(self) -> dict[str, str]:
        # influxd lets INFLUXDB_* variables override its configuration file; the test's must win.
        return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}

    def _command(self) -> list[str]:
        return [self.binary, "run", "-config", str(self.config_path)]

    def _probe(self) -> bool:
        try:
            status, _ = http_request("GET", f"{self.url}/ping", timeout=1.0)
        except OSError:
            return False
        return status == 204

    def _after_start(self) -> None:
        self.create_database(self.database)

    def create_database(self, name: str) -> None:
        self._influxql(f'CREATE DATABASE "{name}"', db=None, method="POST")

    def write(self, lines: str | Sequence[str], *, db: str | None = None, precision: str = "ns") -> None:
        """Write line protocol through the v1 /write endpoint (as the daemon does for InfluxDB < 1.8)."""
        body = lines if isinstance(lines, str) else "\n".join(lines)
        params = urllib.parse.urlencode({"db": db or self.database, "precision": precision})
        status, text = http_request("POST", f"{self.url}/write?{params}", body.encode())
        if status != 204:
            raise ServerError(f"influxdb /write answered {status}: {text.decode(errors='replace')}")

    def query(self, influxql: str, *, db: str | None = None) -> list[dict[str, Any]]:
        """Rows of an InfluxQL query as dicts keyed by column (``time`` in ns), with GROUP BY tags merged
        in and the measurement under ``_measurement``. An InfluxQL error raises ServerError."""
        rows: list[dict[str, Any]] = []
        for result in self._influxql(influxql, db=db or self.database, method="GET"):
            for series in result.get("series", []):
                base = {"_measurement": series.get("name"), **series.get("tags", {})}
                for values in series.get("values", []):
                    rows.append({**base, **dict(zip(series["columns"], values, strict=True))})
        return rows

    async def aquery(self, influxql: str, *, db: str | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.query, influxql, db=db)

    def _influxql(self, q: str, *, db: str | None, method: str) -> list[dict[str, Any]]:
        params = {"q": q, "epoch": "ns"}
        if db is not None:
            params["db"] = db
        encoded = urllib.parse.urlencode(params)
        if method == "GET":
            status, body = http_request("GET", f"{self.url}/query?{encoded}")
        else:
            status, body = http_request(
                "POST", f"{self.url}/query", encoded.encode(),
                {"Content-Type": "application/x-www-form-urlencoded"},
            )
        if status != 200:
            raise ServerError(f"influxdb /query {q!r} answered {status}: {body.decode(errors='replace')}")
        results: list[dict[str, Any]] = json.loads(body).get("results", [])
        for result in results:
            if "error" in result:
                raise ServerError(f"influxdb /query {q!r}: {result['error']}")
        return results


class VictoriaMetrics(ServerProcess):
    """VictoriaMetrics single-node: accepts InfluxDB line protocol on ``/write`` and ``/api/v2/write``.

    A line ``cdu,device=cdu-1 flow_lpm=42`` is stored as the metric ``cdu_flow_lpm{device="cdu-1"}``, with
    timestamps in milliseconds. The v1 ``/write?db=x`` adds the label ``db="x"``; ``/api/v2/write`` adds no
    label for its bucket. ``export()`` and ``query()`` flush first, so what was written is readable.
    Retention is 100 years so tests may write fixed timestamps from the past.
    """

    name = "victoria-metrics"
    binary_name = "victoria-metrics"
    package = "victoria-metrics"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"-storageDataPath={self.workdir / 'data'}",
            f"-httpListenAddr={self.host}:{self.port}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-loggerLevel=WARN",
        ]

    def _probe(self) -> bool:
        try:
            status, body = http_request("GET", f"{self.url}/health", timeout=1.0)
        except OSError:
            return False
        return status == 200 and body.strip() == b"OK"

    def flush(self) -> None:
        """Make everything received so far searchable (VictoriaMetrics buffers it for about a second)."""
        status, body = http_request("GET", f"{self.url}/internal/force_flush")
        if status != 200:
            raise ServerError(f"victoria-metrics force_flush answered {status}: {body!r}")

    def export(self, match: str = '{__name__!=""}') -> list[dict[str, Any]]:
        """Raw series for a series selector, e.g. ``'{__name__=~"cdu_.*",device="cdu-1"}'``:
        ``[{"metric": {"__name__": ..., labels...}, "values": [...], "timestamps": [ms...]}, ...]``."""
        self.flush()
        params = urllib.parse.urlencode({"match[]": match})
        status, body = http_request("GET", f"{self.url}/api/v1/export?{params}")
        if status != 200:
            raise ServerError(f"victoria-metrics export {match!r} answered {status}: {body!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def query(self, promql: str, *, time_s: float | None = None) -> list[dict[str, Any]]:
        """An instant query's ``data.result`` list."""
        self.flush()
        params: dict[str, str] = {"query": promql}
        if time_s is not None:
            params["time"] = f"{time_s:.3f}"
        status, body = http_request("GET", f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        doc = json.loads(body) if body else {}
        if status != 200 or doc.get("status") != "success":
            raise ServerError(f"victoria-metrics query {promql!r} answered {status}: {body!r}")
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def metric_names(self) -> list[str]:
        self.flush()
        status, body = http_request("GET", f"{self.url}/api/v1/label/__name__/values")
        if status != 200:
            raise ServerError(f"victoria-metrics label values answered {status}: {body!r}")
        names: list[str] = json.loads(body)["data"]
        return names

    async def aexport(self, match: str = '{__name__!=""}') -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.export, match)

    async def aquery(self, promql: str, *, time_s: float | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.query, promql, time_s=time_s)
