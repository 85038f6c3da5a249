"""The protocol registry: built-ins declare themselves, the docs' table follows, a plugin joins for real.

The plugin test follows docs/contributing.md's worked example word for word: it writes the example's files
into a scratch directory, installs them the way pip does (a `*.dist-info` with METADATA and
entry_points.txt), and runs `dcim schema`, `dcim check`, `dcim simulate`, `dcim read` and `dcim write` as
processes with that directory on PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from dcim.app.config import ConfigError, config_model, json_schema, parse_config
from dcim.app.simulate import run_simulators, wait_listening
from dcim.drivers.base import DeviceBase
from dcim.drivers.profiles import PointBase, parse_profile
from dcim.drivers.registry import BUILTIN, PROTOCOLS, ProtocolSpec, RegistryError, markdown_table
from dcim.simulators.plant import Plant

REPO = Path(__file__).resolve().parents[1]
CONTRIBUTING = REPO / "docs" / "contributing.md"


def _builtin_specs() -> tuple[ProtocolSpec, ...]:
    return tuple(importlib.import_module(package).PROTOCOL for package in BUILTIN)


def _protocol_section() -> str:
    text = CONTRIBUTING.read_text()
    start = text.index("## Adding a protocol")
    end = text.index("\n## ", start + 1)
    return text[start:end]


# ---- built-ins and docs ---------------------------------------------------------------------------------


def test_every_builtin_declares_a_complete_protocol() -> None:
    assert [spec.name for spec in _builtin_specs()] == ["modbus", "snmp", "opcua"]
    schema = json_schema()
    for spec in _builtin_specs():
        assert PROTOCOLS.get(spec.name) is spec
        assert issubclass(spec.device, DeviceBase) and issubclass(spec.point, PointBase)
        assert callable(spec.driver_factory())
        assert "ready" in inspect.signature(spec.simulator_serve()).parameters
        assert spec.device.__name__ in schema["$defs"]
        assert spec.docs is not None and (REPO / "docs" / spec.docs).is_file()


def test_docs_protocol_table_lists_exactly_the_builtins() -> None:
    section = _protocol_section()
    table = re.search(r"<!-- protocol-table:[^>]*-->\n(.*?)\n<!-- /protocol-table -->", section, re.S)
    assert table is not None, "docs/contributing.md lost its protocol table markers"
    assert table.group(1) == markdown_table(_builtin_specs()), (
        "docs/contributing.md's protocol table is out of date; paste drivers.registry.markdown_table()")
    # The README's device example names the protocols in a comment.
    readme = (REPO / "README.md").read_text()
    listed = re.search(r"protocol: modbus +# ([a-z0-9 |]+):", readme)
    assert listed is not None
    assert listed.group(1).split(" | ") == [spec.name for spec in _builtin_specs()]


def test_a_spec_without_its_literal_tag_is_refused() -> None:
    class Untagged(DeviceBase):
        pass

    with pytest.raises(RegistryError, match="Literal"):
        ProtocolSpec(name="untagged", title="x", device=Untagged, point=PointBase, driver="x:y")


def test_a_protocol_registered_at_run_time_joins_the_configuration_and_profiles() -> None:
    class BusDevice(DeviceBase):
        protocol: Literal["testbus"]
        address: int = 1

    class BusPoint(PointBase):
        offset: int

    spec = ProtocolSpec(name="testbus", title="test bus", device=BusDevice, point=BusPoint,
                        driver="tests.nowhere:make_driver")
    before = config_model()
    raw = {"site": {"id": "lab"}, "profile_dirs": [],
           "devices": [{"id": "b-1", "kind": "cdu", "protocol": "testbus", "profile": "generic-cdu"}]}
    with pytest.raises(ConfigError) as unknown:
        parse_config(raw)
    assert ("devices[0]", "protocol must be one of modbus, snmp, opcua") in unknown.value.errors
    PROTOCOLS.register(spec)
    try:
        assert config_model() is not before
        assert "BusDevice" in json_schema()["$defs"]
        with pytest.raises(ConfigError) as typo:
            parse_config({**raw, "devices": [{**raw["devices"][0], "adress": 2, "simulate": True}]})
        # The union's tag is not in the error's path; the profile is for another protocol.
        assert ("devices[0].adress", "unknown key (typo?)") in typo.value.errors
        assert ("devices[0].simulate", "protocol testbus has no simulator") in typo.value.errors
        assert any(p == "devices[0].profile" and "is for modbus" in m for p, m in typo.value.errors)
        profile = parse_profile({"name": "bus-cdu", "kind": "cdu", "protocol": "testbus",
                                 "points": [{"name": "flow_lpm", "offset": 3}]})
        assert isinstance(profile.points[0], BusPoint)
        with pytest.raises(RegistryError, match="no simulator"):
            spec.simulator_serve()
        with pytest.raises(ModuleNotFoundError):
            spec.driver_factory()
    finally:
        PROTOCOLS.unregister("testbus")
    assert "BusDevice" not in json_schema()["$defs"]


# ---- readiness ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _taken(kind: socket.SocketKind) -> Any:
    """A port held by this test for as long as the block runs (bound, and listening for TCP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("protocol", "kind", "profile", "device_kind"), [
    ("modbus", socket.SOCK_STREAM, "generic-cdu", "cdu"),
    ("snmp", socket.SOCK_DGRAM, "apc-rpdu2", "pdu"),
])
async def test_a_simulator_that_cannot_bind_is_never_ready_and_says_why(
        protocol: str, kind: socket.SocketKind, profile: str, device_kind: str) -> None:
    with _taken(kind) as port:
        config = parse_config({"site": {"id": "lab"}, "devices": [
            {"id": "d-1", "kind": device_kind, "protocol": protocol, "host": "127.0.0.1", "port": port,
             "profile": profile, "simulate": True}]})
        ready = asyncio.Event()
        task = asyncio.create_task(run_simulators(config, Plant(config, frozen=True), ready=ready))
        try:
            with pytest.raises(ExceptionGroup) as failed:  # the simulators' task group, with the bind error
                await wait_listening(ready, task)
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        assert not ready.is_set()
        # pysnmp reports the OSError itself; pymodbus logs it and raises its own RuntimeError.
        assert failed.group_contains(OSError, match="in use") or failed.group_contains(
            RuntimeError, match="Could not start listen")


# ---- the worked example, installed as a plugin ---------------------------------------------------------


def _example_files() -> dict[str, str]:
    """The example's code blocks, each opening with a `# <path>` line, by path."""
    files = {}
    for body in re.findall(r"```(?:python|yaml|toml)\n(.*?)```", _protocol_section(), re.S):
        first, _, rest = body.partition("\n")
        if first.startswith("# ") and "." in first:
            files[first[2:].strip()] = rest
    return files


def _install_example(root: Path) -> tuple[Path, dict[str, Any]]:
    """The example's package as pip would install it; returns its site directory and the configuration."""
    files = _example_files()
    assert {"toyline/__init__.py", "toyline/driver.py", "toyline/simulator.py", "profiles/toyline-cdu.yaml",
            "pyproject.toml", "dcim.yaml"} <= set(files), sorted(files)
    site = root / "site"
    for path, text in files.items():
        if path.startswith("toyline/"):
            (site / path).parent.mkdir(parents=True, exist_ok=True)
            (site / path).write_text(text)
        elif path.startswith("profiles/"):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
    project = tomllib.loads(files["pyproject.toml"])["project"]
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
        for group, points in project["entry-points"].items())
    (dist_info / "entry_points.txt").write_text(entry_points)
    return site, yaml.safe_load(files["dcim.yaml"])


def _env(site: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _dcim(root: Path, site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dcim.app.cli", *args], cwd=root, env=_env(site),
                          capture_output=True, text=True, timeout=120)


@contextlib.asynccontextmanager
async def _simulating(root: Path, site: Path, config: Path) -> AsyncIterator[dict[str, Any]]:
    """`dcim simulate` as a process; yields its log records up to "simulators ready", which it logs itself
    once every simulator said its sockets are bound."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dcim.app.cli", "simulate", "-c", str(config), "--frozen",
        cwd=root, env=_env(site), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    seen: list[str] = []
    records: dict[str, Any] = {}
    drain: asyncio.Task[bytes] | None = None
    try:
        async with asyncio.timeout(120):  # a hang guard only: readiness is what we wait for
            while "simulators ready" not in records:
                line = (await process.stderr.readline()).decode()
                if not line:
                    raise AssertionError(f"dcim simulate exited {await process.wait()}:\n{''.join(seen)}")
                seen.append(line)
                with contextlib.suppress(json.JSONDecodeError):
                    record = json.loads(line)
                    records[record["event"]] = record
        drain = asyncio.create_task(process.stderr.read())
        yield records
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
        if drain is not None:
            await drain


async def test_the_worked_example_is_a_protocol_for_schema_check_simulate_read_and_write(tmp_path: Path) -> None:
    site, config = _install_example(tmp_path)

    schema = _dcim(tmp_path, site, "schema")
    assert schema.returncode == 0, schema.stderr
    defs = json.loads(schema.stdout)["$defs"]
    assert defs["ToyDevice"]["properties"]["protocol"]["const"] == "toyline"

    (tmp_path / "dcim.yaml").write_text(yaml.safe_dump(config))
    check = _dcim(tmp_path, site, "check", "-c", "dcim.yaml")
    assert check.returncode == 0, check.stderr
    assert "1 cdu/toyline" in check.stdout

    wrong = {**config, "devices": [{**config["devices"][0], "port": "seventy"}]}
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong))
    refused = _dcim(tmp_path, site, "check", "-c", "wrong.yaml")
    assert refused.returncode == 1 and "devices[0].port:" in refused.stderr, refused.stderr

    # Port 0: the toy simulator binds a free port and logs it, so nothing is picked free and released.
    served = {**config, "logging": {"format": "json"}, "devices": [{**config["devices"][0], "port": 0}]}
    (tmp_path / "simulate.yaml").write_text(yaml.safe_dump(served))
    async with _simulating(tmp_path, site, tmp_path / "simulate.yaml") as records:
        port = records["toyline simulator listening"]["port"]
        assert records["simulators ready"]["devices"] == ["toy-1"]
        # Operator writes with no daemon running: `--direct`, through the same guard (docs/writes.md).
        reading = {**config, "devices": [{**config["devices"][0], "port": port, "simulate": False}],
                   "rules": {"control": {"operator_writes": True}}}
        (tmp_path / "read.yaml").write_text(yaml.safe_dump(reading))

        read = await asyncio.to_thread(_dcim, tmp_path, site, "read", "--json", "-c", "read.yaml", "toy-1")
        assert read.returncode == 0, read.stderr
        samples = {s["point"]: s for s in json.loads(read.stdout)}
        assert set(samples) == {"supply_temp_c", "flow_lpm", "supply_temp_setpoint_c"}
        assert all(s["quality"] == "good" and isinstance(s["value"], float) for s in samples.values())
        assert samples["supply_temp_c"]["measurement"] == "cdu"

        out_of_range = await asyncio.to_thread(_dcim, tmp_path, site, "write", "--direct", "-c", "read.yaml",
                                               "toy-1", "supply_temp_setpoint_c", "80")
        assert out_of_range.returncode == 1 and "outside the allowed range" in out_of_range.stderr
        write = await asyncio.to_thread(_dcim, tmp_path, site, "write", "--direct", "-c", "read.yaml",
                                        "toy-1", "supply_temp_setpoint_c", "30.5")
        assert write.returncode == 0, write.stderr
        again = await asyncio.to_thread(_dcim, tmp_path, site, "read", "--json", "-c", "read.yaml", "toy-1")
        assert again.returncode == 0, again.stderr
        after = {s["point"]: s["value"] for s in json.loads(again.stdout)}
        assert after["supply_temp_setpoint_c"] == 30.5
