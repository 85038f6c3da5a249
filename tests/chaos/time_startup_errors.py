"""How long `dcim run` takes to report a start-up error: a measuring script, not a test.

    .venv/bin/python -m tests.chaos.time_startup_errors [--runs 3] [--compare OTHER_CHECKOUT]

The configuration is the example hall (Modbus, SNMP and OPC UA devices) with MQTT pointed at a broker that
accepts connections and never answers, the ingest on, and the HTTP API on: the most a start-up can have to
import and build. Three faults, each timed from process start to exit: the HTTP port taken, a second instance
(the script itself holds the state_dir's lock), an unwritable state_dir. Prints one line per run (wall time,
the process's CPU time, the load average), for docs/reliability.md; asserts nothing about time
(tests/chaos/test_lifecycle.py checks the one line and the exit status). With --compare, each run is made
with the other checkout's code right after this one's (the same interpreter and packages, `dcim` imported
from there), so both see the same load.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def _config(root: Path, **changes: Any) -> Path:
    config = yaml.safe_load((REPO / "examples" / "hall.yaml").read_text())
    config.update(changes)
    path = root / "dcim.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections complete in the backlog; nobody reads them
    return sock


@contextmanager
def port_taken(root: Path, broker: int) -> Iterator[Path]:
    with _listener() as taken:
        yield _config(root, state_dir=str(root / "state"), http={"port": taken.getsockname()[1]},
                      mqtt={"host": "127.0.0.1", "port": broker, "prefix": "dcim"},
                      influxdb={"url": f"http://127.0.0.1:{broker}", "database": "dcim"})


@contextmanager
def second_instance(root: Path, broker: int) -> Iterator[Path]:
    state = root / "state"
    state.mkdir()
    fd = os.open(state / "dcim.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield _config(root, state_dir=str(state), http={"port": 0},
                      mqtt={"host": "127.0.0.1", "port": broker, "prefix": "dcim"})
    finally:
        os.close(fd)


@contextmanager
def unwritable_state_dir(root: Path, broker: int) -> Iterator[Path]:
    blocker = root / "not-a-dir"
    blocker.write_text("")
    yield _config(root, state_dir=str(blocker / "state"), http={"port": 0},
                  mqtt={"host": "127.0.0.1", "port": broker, "prefix": "dcim"})


CASES: dict[str, Callable[[Path, int], Any]] = {
    "http port taken": port_taken,
    "second instance": second_instance,
    "state_dir unwritable": unwritable_state_dir,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare", type=Path, default=None, help="another checkout of dcim, run alternately")
    args = parser.parse_args()
    checkouts = {"this": REPO, **({"other": args.compare.resolve()} if args.compare else {})}
    worst = dict.fromkeys(checkouts, 0.0)
    with ExitStack() as stack:
        broker = stack.enter_context(_listener()).getsockname()[1]
        for name, case in CASES.items():
            for run in range(args.runs):
                for which, repo in checkouts.items():
                    took, cpu, load, result = _time(case, broker, repo)
                    worst[which] = max(worst[which], took)
                    lines = result.stderr.strip().splitlines()
                    print(f"{name:22} {which:5} run {run + 1}: {took:5.2f} s ({cpu:4.2f} s CPU)  "
                          f"exit {result.returncode}  "
                          f"load {load:4.1f}  {len(lines)} line(s): {lines[-1] if lines else ''}", flush=True)
    print("worst: " + ", ".join(f"{which} {took:.2f} s" for which, took in worst.items()))
    return 0


def _time(case: Callable[[Path, int], Any], broker: int, repo: Path,
          ) -> tuple[float, float, float, subprocess.CompletedProcess[str]]:
    # PYTHONPATH first on sys.path: `dcim` comes from `repo`, not from the checkout installed in the venv.
    env = {**os.environ, "PDU_PRIV_KEY": "not-used-before-start", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(repo)}
    with tempfile.TemporaryDirectory() as tmp, case(Path(tmp), broker) as path:
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "dcim.app.cli", "run", "-c", str(path)],
                                cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return took, cpu, load, result


if __name__ == "__main__":
    raise SystemExit(main())
