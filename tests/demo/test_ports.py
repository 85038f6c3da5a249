"""A port the demo needs that something else holds: one line naming it and what to do, exit status 1,
nothing started. The test holds the port (a listening TCP socket, a bound UDP socket) for the whole run."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.app.config import parse_config
from dcim.app.demo import listeners, ports_message, unavailable
from tests.demo.busy import EXAMPLE

REPO = EXAMPLE.parents[1]


def hold(kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


@pytest.fixture
def tcp() -> Iterator[socket.socket]:
    with hold(socket.SOCK_STREAM) as sock:
        yield sock


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    with hold(socket.SOCK_DGRAM) as sock:
        yield sock


def example(tmp_path: Path, change: Any) -> Path:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["state_dir"] = str(tmp_path / "state")
    change(raw)
    path = tmp_path / "hall.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def device(raw: dict[str, Any], device_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in raw["devices"] if d["id"] == device_id)
    return found


def run_demo(config: Path) -> subprocess.CompletedProcess[str]:
    # --duration bounds the run should the check ever let the demo start.
    return subprocess.run([sys.executable, "-m", "dcim", "demo", "-c", str(config), "--duration", "30"],
                          cwd=REPO, capture_output=True, text=True, timeout=150, check=False)


def assert_one_line(result: subprocess.CompletedProcess[str], port: int, transport: str, what: str,
                    config: Path) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("dcim demo: already in use: ")
    assert f"127.0.0.1:{port}/{transport} ({what}" in line
    assert f"change the port in {config}" in line and "stop what holds" in line
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""  # nothing started, nothing to show


def test_http_api_port_taken(tmp_path: Path, tcp: socket.socket) -> None:
    port = tcp.getsockname()[1]
    config = example(tmp_path, lambda raw: raw.update(http={"port": port}))
    assert_one_line(run_demo(config), port, "tcp", "HTTP API, http.port", config)


def test_modbus_simulator_port_taken(tmp_path: Path, tcp: socket.socket) -> None:
    port = tcp.getsockname()[1]
    config = example(tmp_path, lambda raw: device(raw, "cdu-1").update(port=port))
    assert_one_line(run_demo(config), port, "tcp", "simulated cdu-1", config)


def test_snmp_simulator_port_taken(tmp_path: Path, udp: socket.socket) -> None:
    port = udp.getsockname()[1]
    config = example(tmp_path, lambda raw: device(raw, "apc-a01a").update(port=port))
    assert_one_line(run_demo(config), port, "udp", "simulated apc-a01a", config)


def test_opcua_simulator_port_taken(tmp_path: Path, tcp: socket.socket) -> None:
    port = tcp.getsockname()[1]
    config = example(tmp_path, lambda raw: device(raw, "chiller-1").update(endpoint=f"opc.tcp://127.0.0.1:{port}"))
    assert_one_line(run_demo(config), port, "tcp", "simulated chiller-1", config)


def test_an_address_that_cannot_be_bound_says_why(tmp_path: Path, tcp: socket.socket,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine; the held port is in use: one line names both.
    # Off loopback the API needs HTTPS and a login: given (the files are not read before the bind).
    monkeypatch.setenv("DCIM_TEST_HTTP_TOKEN", "t" * 32)
    config = parse_config(yaml.safe_load(example(tmp_path, lambda raw: raw.update(
        http={"host": "192.0.2.1", "port": 8470, "tls_cert_file": str(tmp_path / "dcim.crt"),
              "tls_key_file": str(tmp_path / "dcim.key"), "token": "env:DCIM_TEST_HTTP_TOKEN"})).read_text()),
        "test")
    config = config.model_copy(update={"devices": [
        d.model_copy(update={"port": tcp.getsockname()[1]}) if d.id == "cdu-1" else d for d in config.devices]})
    problems = dict((listener.what, reason) for listener, reason in unavailable(listeners(config)))
    assert problems["HTTP API, http.port"] == "cannot assign requested address"
    assert problems["simulated cdu-1"] == "in use"
    line = ports_message(unavailable(listeners(config)), "hall.yaml")
    assert "\n" not in line and line.startswith("dcim demo: cannot listen on 192.0.2.1:8470/tcp (HTTP API")
    assert f"127.0.0.1:{tcp.getsockname()[1]}/tcp (simulated cdu-1): in use" in line
