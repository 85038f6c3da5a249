"""The daemon's life as a process: start-up errors are one line and exit 1, one instance per state_dir,
SIGHUP reloads devices without touching the others, a bad file changes nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dcim.simulators.plant import Plant
from tests.chaos.daemonlib import health, healthy, http_port, log_events, metrics, polls, with_http
from tests.e2e.harness import REPO, DaemonProcess, cdu_hall, load, simulators
from tests.helpers import wait_until

# Generous: what is asserted is that the process ended by itself, not how fast (a loaded 2-core machine).
EXIT_TIMEOUT = 30


def dcim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dcim.app.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=EXIT_TIMEOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def edit(path: Path, **changes: Any) -> Path:
    config = yaml.safe_load(path.read_text())
    config.update(changes)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_http_port_taken_while_the_broker_never_answers_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """The start-up hang: the HTTP port taken while the publisher connects to a broker that accepts the TCP
    connection and never says CONNACK. Everything that can fail is now bound before the publisher starts."""
    with socket.socket() as taken, socket.socket() as silent_broker:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        silent_broker.bind(("127.0.0.1", 0))
        silent_broker.listen(16)  # connections complete in the backlog; nobody ever reads them
        port = taken.getsockname()[1]
        path = cdu_hall(tmp_path, cdus=1)
        edit(path, http={"port": port},
             mqtt={"host": "127.0.0.1", "port": silent_broker.getsockname()[1]})
        result = dcim("run", "-c", str(path))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"dcim: cannot start: http api cannot listen on 127.0.0.1:{port}: address already in use"]


# What makes a start take seconds on a loaded machine: none of it may be imported before the start-up checks.
HEAVY = ("asyncua", "pysnmp", "pymodbus", "influxdb_client", "aiomqtt", "aiohttp", "cryptography", "aetcd", "grpc",
         "dcim.app.daemon")

_IMPORTED_AT_EXIT = """
import sys
from dcim.app.cli import main
code = main(sys.argv[1:])
print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy} or m in {heavy}))
sys.exit(code)
"""


def test_start_up_errors_come_before_the_daemon_and_protocol_libraries_are_imported(tmp_path: Path) -> None:
    """The example hall (Modbus, SNMP, OPC UA, MQTT, the ingest) with its HTTP port taken: refused before
    the daemon or any protocol library is imported, so the refusal does not wait for seconds of imports.
    (The state_dir lock is taken before the port is bound: a second instance is refused earlier still.)"""
    config = yaml.safe_load((REPO / "examples" / "hall.yaml").read_text())
    with socket.socket() as taken, socket.socket() as silent:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = taken.getsockname()[1]
        config.update(state_dir=str(tmp_path / "state"), http={"port": port},
                      mqtt={"host": "127.0.0.1", "port": silent.getsockname()[1], "prefix": "dcim"},
                      influxdb={"url": f"http://127.0.0.1:{silent.getsockname()[1]}", "database": "dcim"})
        path = tmp_path / "hall.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        script = _IMPORTED_AT_EXIT.format(heavy=repr(set(HEAVY)))
        result = subprocess.run([sys.executable, "-c", script, "run", "-c", str(path)], cwd=REPO,
                                capture_output=True, text=True, timeout=EXIT_TIMEOUT,
                                env={**os.environ, "PDU_PRIV_KEY": "unused"})
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"dcim: cannot start: http api cannot listen on 127.0.0.1:{port}: address already in use"]
    assert result.stdout.strip() == "[]", result.stdout


def test_an_unwritable_state_dir_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # A path under a regular file: not creatable whoever runs the test (root included).
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path = edit(cdu_hall(tmp_path, cdus=1), state_dir=str(blocker / "state"))
    result = dcim("run", "-c", str(path))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dcim: cannot start: state_dir {blocker / 'state'} "
                                                   "is not writable"), result.stderr


async def test_a_second_instance_on_the_same_state_dir_exits_1_naming_the_first(tmp_path: Path) -> None:
    path = with_http(cdu_hall(tmp_path, cdus=1))
    config = load(path)
    async with simulators(config, Plant(config, frozen=True)):
        with DaemonProcess(path) as first:
            await wait_until(lambda: log_events(first, "daemon started"), timeout=30, message=first.log())
            assert first.process is not None
            second = dcim("run", "-c", str(path))
            assert second.returncode == 1, second.stderr
            state_dir = Path(config.state_dir)
            assert second.stderr.strip().splitlines() == [
                f"dcim: cannot start: another dcim instance (pid {first.process.pid}) is running on state_dir "
                f"{state_dir} (lock {state_dir / 'dcim.lock'})"]
            assert first.process.poll() is None  # the first one is not disturbed
            assert first.stop() == 0, first.log()
        # The lock goes with the process: the next start takes it.
        with DaemonProcess(path) as again:
            await wait_until(lambda: len(log_events(again, "daemon started")) == 2, timeout=30, message=again.log())
            assert again.stop() == 0, again.log()


def _hall_without(full: dict[str, Any], cdu: str) -> dict[str, Any]:
    """The 4-CDU hall without one CDU and its row."""
    config = yaml.safe_load(yaml.safe_dump(full))
    config["devices"] = [d for d in config["devices"] if d["id"] != cdu]
    for room in config["rooms"]:
        room["rows"] = [r for r in room["rows"] if r["id"] != f"R{cdu[-1]}"]
    return config


async def test_sighup_starts_added_devices_stops_removed_ones_and_leaves_the_others_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    full_path = with_http(cdu_hall(tmp_path, cdus=4, interval="200ms"))
    full = yaml.safe_load(full_path.read_text())
    sim_config = load(full_path)  # the simulators serve all four from the start
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(_hall_without(full, "cdu-4"), sort_keys=False))
    async with simulators(sim_config, Plant(sim_config, frozen=True)):
        with DaemonProcess(path) as daemon:
            port = await wait_until(lambda: http_port(daemon), timeout=30, message=daemon.log())

            async def polled(devices: tuple[str, ...], count: int) -> Any:
                sample = await metrics(port)
                return sample if all(polls(sample, d, "ok") >= count for d in devices) else None

            await wait_until(lambda: polled(("cdu-1", "cdu-2", "cdu-3"), 3), timeout=30, message=daemon.log())

            # The garbage collector was settled at start: start-up's objects frozen, every collection counted.
            settled = await metrics(port)
            assert settled[("dcim_gc_frozen_objects", frozenset())] > 10_000, settled
            full_collections = settled[("dcim_gc_collections_total", frozenset({("generation", "2")}))]
            # And after the first poll round, what it built too (each point's reading and live record).
            at_start = log_events(daemon, "garbage collector settled")[0]["frozen_objects"]
            [round_done] = await wait_until(
                lambda: log_events(daemon, "garbage collector: the first round's objects frozen"), timeout=30,
                message=daemon.log())
            assert round_done["frozen_objects"] > at_start, (round_done, at_start)

            # A good file: cdu-3 goes, cdu-4 comes, cdu-1 and cdu-2 are not touched.
            path.write_text(yaml.safe_dump(_hall_without(full, "cdu-3"), sort_keys=False))
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGHUP)
            await wait_until(lambda: log_events(daemon, "configuration reloaded"), timeout=30, message=daemon.log())
            changed = log_events(daemon, "reload: devices changed")
            assert [(c["stopped"], c["started"], c["restarted"]) for c in changed] == [(["cdu-3"], ["cdu-4"], [])]
            before = await metrics(port)
            # The reload settled the collector again: one full collection took what the old configuration left.
            assert before[("dcim_gc_collections_total", frozenset({("generation", "2")}))] >= full_collections + 1
            after = await wait_until(lambda: _more_polls(port, before, "cdu-4", 8), timeout=60, message=daemon.log())
            assert polls(after, "cdu-3", "ok") + polls(after, "cdu-3", "error") == \
                polls(before, "cdu-3", "ok") + polls(before, "cdu-3", "error"), "cdu-3 is still polled"
            new_polls = polls(after, "cdu-4", "ok") - polls(before, "cdu-4", "ok")
            for kept in ("cdu-1", "cdu-2"):
                # Same interval as cdu-4: about as many polls in the same window, none failed.
                assert polls(after, kept, "ok") - polls(before, kept, "ok") >= new_polls - 2, after
                assert polls(after, kept, "error") == 0
            report = await wait_until(lambda: healthy(port), timeout=30, message=daemon.log())
            assert sorted(report["devices"]) == ["cdu-1", "cdu-2", "cdu-4"], report
            # The loop lag that lowers the polls in flight: a tenth of the shortest interval polled (200 ms),
            # and 0.04 s at least.
            admission = report["polling"]["admission"]
            assert admission["lag_target"] == pytest.approx(0.04), admission
            assert admission["max_in_flight"] == 1024 and 64 <= admission["in_flight_limit"] <= 1024, admission

            # A bad file: a duplicated key and an unknown one. Nothing changes; each error is logged.
            path.write_text(path.read_text().replace("site:\n  id: hall-1\n",
                                                     "site:\n  id: hall-1\n  id: hall-2\n  colour: red\n"))
            daemon.process.send_signal(signal.SIGHUP)
            refused = await wait_until(
                lambda: log_events(daemon, "reload refused: configuration invalid; the running one stays"),
                timeout=30, message=daemon.log())
            assert [r["path"] for r in refused] == ["site.id"]  # the YAML is checked before the schema
            before = await metrics(port)
            await wait_until(lambda: _more_polls(port, before, "cdu-4", 3), timeout=60, message=daemon.log())
            report = await wait_until(lambda: healthy(port), timeout=30, message=daemon.log())
            assert sorted(report["devices"]) == ["cdu-1", "cdu-2", "cdu-4"], report
            assert len(log_events(daemon, "configuration reloaded")) == 1
            assert daemon.stop() == 0, daemon.log()


async def _more_polls(port: int, before: dict[Any, float], device: str, count: int) -> Any:
    sample = await metrics(port)
    return sample if polls(sample, device, "ok") - polls(before, device, "ok") >= count else None


def test_dcim_check_reports_a_duplicated_key_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("site:\n  id: hall-1\nmqtt:\n  host: a\n  port: 1883\n  host: b\n")
    result = dcim("check", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"{path}: 1 error(s)", "  mqtt.host: duplicate key (line 6; first at line 4)"]


def test_dcim_check_reports_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("site:\n  id: hall-1\n  name: Salle réseau\n".encode("latin-1"))
    result = dcim("check", "-c", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"{path}: 1 error(s)", "  (file): not UTF-8 text: byte 0xe9 at line 3 (offset 34); save the file as UTF-8"]


async def test_sigterm_while_the_publisher_waits_for_a_silent_broker_stops_the_daemon(tmp_path: Path) -> None:
    """The other half of the start-up hang: the first SIGTERM is enough while the publisher is still
    waiting for a broker that accepted the connection and never answers."""
    with socket.socket() as silent_broker:
        silent_broker.bind(("127.0.0.1", 0))
        silent_broker.listen(16)
        path = edit(cdu_hall(tmp_path, cdus=1),
                    mqtt={"host": "127.0.0.1", "port": silent_broker.getsockname()[1]})
        config = load(path)
        async with simulators(config, Plant(config, frozen=True)):
            with DaemonProcess(path) as daemon:
                await wait_until(lambda: log_events(daemon, "first poll round done"), timeout=30,
                                 message=daemon.log())
                assert daemon.stop(signal.SIGTERM, timeout=EXIT_TIMEOUT) == 0, daemon.log()
                assert log_events(daemon, "stopped"), daemon.log()


async def test_sighup_names_each_section_that_needs_a_restart_and_applies_logging(tmp_path: Path) -> None:
    """Sections SIGHUP cannot apply (mqtt, http, influxdb, state_dir...): one warning per section naming the
    changed keys (never a value: http.token is a secret), listed in /healthz until a file reverts them, the
    running values kept. `logging` is applied at once: at `warning`, the reload's info lines are gone."""
    path = with_http(cdu_hall(tmp_path, cdus=1))
    original = yaml.safe_load(path.read_text())
    token = "s3cret-token-never-logged"
    (tmp_path / "http.token").write_text(token)
    with DaemonProcess(path) as daemon:
        port = await wait_until(lambda: http_port(daemon), timeout=30, message=daemon.log())
        changed = yaml.safe_load(yaml.safe_dump(original))
        changed["mqtt"] = {"prefix": "elsewhere"}
        changed["http"] = {**changed["http"], "token": f"file:{tmp_path / 'http.token'}"}
        changed["influxdb"] = {"url": "http://127.0.0.1:1", "database": "dcim"}
        changed["state_dir"] = str(tmp_path / "other-state")
        changed["logging"] = {**changed["logging"], "level": "warning"}
        path.write_text(yaml.safe_dump(changed, sort_keys=False))
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)

        async def restart_required(expected: list[str]) -> bool:
            _, report = await health(port)
            return bool(report["restart_required"] == expected)

        sections = ["http", "influxdb", "mqtt", "state_dir"]
        # Set once the reload is done (its "configuration reloaded" is an info line, and the level is warning now).
        await wait_until(lambda: restart_required(sections), timeout=30, message=daemon.log())
        lines = log_events(daemon, "reload: section changed; it takes effect at the next restart, the running "
                                   "values stay")
        assert sorted((line["section"], line.get("keys")) for line in lines) == [
            ("http", ["token"]), ("influxdb", None), ("mqtt", ["prefix"]), ("state_dir", None)], daemon.log()
        assert [(e["logging_level"], e["logging_format"]) for e in log_events(daemon, "reload: logging applied")] == [
            ("warning", "json")]
        assert token not in daemon.log()
        assert not (tmp_path / "other-state").exists()  # the running state_dir stays

        # Reverted (but for the logging level): nothing waits for a restart any more; the reload's own info
        # lines are not written at `warning`.
        path.write_text(yaml.safe_dump({**original, "logging": changed["logging"]}, sort_keys=False))
        daemon.process.send_signal(signal.SIGHUP)
        await wait_until(lambda: restart_required([]), timeout=30, message=daemon.log())
        assert len(log_events(daemon, "reloading the configuration")) == 1, daemon.log()
        assert len(lines) == len(log_events(daemon, "reload: section changed; it takes effect at the next "
                                                    "restart, the running values stay"))
        assert daemon.stop() == 0, daemon.log()
