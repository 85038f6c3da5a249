"""What the benchmarks share: the machine they ran on, process CPU and memory from /proc, held ports.

Each benchmark runs as a script (`python bench/bench_x.py`), so this directory is first on sys.path and
`from benchlib import ...` finds this module.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line for the figures' header: cores, CPU model, Python."""
    return f"{os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, {platform.system()}"


def host_probe() -> float:
    """Microseconds this host takes for a fixed piece of pure Python (the shape of a poll's decoding: 20 float32
    values unpacked, formatted to 7 and 8 digits, parsed back and packed again), the best of 7 repeats. The
    same code on the same VM kind has measured 30-55 % apart from one hour to the next (BENCHMARKS.md,
    2026-12-06); a run's figures are read against this one, printed with them."""
    import struct
    import timeit

    floats = struct.Struct(">20f")
    data = floats.pack(*(230.0 + i * 1.37 for i in range(20)))

    def work() -> None:
        raws = floats.unpack(data)
        floats.pack(*(float(f"{x:.7g}") for x in raws))
        floats.pack(*(float(f"{x:.8g}") for x in raws))

    return min(timeit.repeat(work, number=2_000, repeat=7)) / 2_000 * 1e6


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process (this one by default)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def system_seconds(pid: int | str = "self") -> float:
    """The system (kernel) part of `cpu_seconds`: syscalls, and on loopback the peer's TCP receive path too."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / _TICKS


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# Sockets holding TCP ports for the rest of the benchmark process (see free_ports).
_HELD: list[socket.socket] = []


def free_ports(n: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> list[int]:
    """`n` distinct loopback ports. TCP ports stay held until this process exits: bound with SO_REUSEADDR and
    never listening, so no other bind(0) or outgoing connection gets them while the simulators (which bind
    with SO_REUSEADDR, in this process or a child) still can. UDP ports (kind=SOCK_DGRAM) are only
    candidates, released on return: a UDP server cannot share a held port, and the SNMP simulator runs in a
    child process; a port taken meanwhile makes that child fail at start, loudly."""
    sockets = [socket.socket(socket.AF_INET, kind) for _ in range(n)]
    try:
        for s in sockets:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in sockets]
    except BaseException:
        for s in sockets:
            s.close()
        raise
    if kind == socket.SOCK_STREAM:
        _HELD.extend(sockets)
    else:
        for s in sockets:
            s.close()
    return ports


def release_ports() -> None:
    """Close the sockets that hold the ports `free_ports` gave, once nothing uses them any more (a bench run
    over): a bench that runs several sizes in one process would otherwise hold every port of every run."""
    for s in _HELD:
        s.close()
    _HELD.clear()


# ---- counting instructions (`--count` of bench_pipeline.py and bench_modbus.py) ---------------------------

def callgrind_run(command: list[str], env: dict[str, str], *, toggle: tuple[str, ...] = (),
                  cwd: Path | None = None) -> tuple[int, str]:
    """Run `command` (a Python process of a bench) under valgrind's callgrind with the instrumentation off
    until the process switches it on (`callgrind_instrument`); with `toggle`, only inside those functions is
    anything counted. Returns the instructions counted and the process' standard output."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--count needs valgrind (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        options = ["--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/callgrind.out"]
        if toggle:
            options += ["--collect-atstart=no", *(f"--toggle-collect={name}" for name in toggle)]
        proc = subprocess.run(["valgrind", *options, *command], env={**env, "PYTHONHASHSEED": "0"}, cwd=cwd,
                              capture_output=True, text=True)
    collected = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or collected is None:
        raise SystemExit(f"the measurement under callgrind failed:\n{proc.stdout}\n{proc.stderr}")
    return int(collected.group(1)), proc.stdout


async def callgrind_instrument(state: str) -> None:
    """Switch callgrind's instrumentation of this process "on" or "off" (from inside it)."""
    control = await asyncio.create_subprocess_exec("callgrind_control", f"--instr={state}", str(os.getpid()),
                                                   stdout=subprocess.DEVNULL)
    if await control.wait() != 0:
        raise SystemExit(f"callgrind_control could not switch the instrumentation {state}")
    await asyncio.sleep(0.5)  # callgrind takes the command at its next check
