"""What the benchmarks share: the machine they ran on, process CPU and memory from /proc, free ports.

Each benchmark runs as a script (`python bench/bench_x.py`), so this directory is first on sys.path and
`from benchlib import ...` finds this module.
"""

from __future__ import annotations

import os
import platform
import socket
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


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process (this one by default)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_ports(n: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> list[int]:
    """`n` distinct free loopback ports (TCP, or UDP with kind=SOCK_DGRAM), all held until all are chosen."""
    sockets = [socket.socket(socket.AF_INET, kind) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
