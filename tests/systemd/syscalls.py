"""The system calls a unit's SystemCallFilter= lines allow, expanded by `systemd-analyze syscall-filter`
(the same group definitions systemd itself uses), for tests/systemd/sandbox.py."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path


@cache
def groups() -> dict[str, list[str]]:
    """@group -> its members (system calls and nested @groups), as this systemd defines them."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = found.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return found


def expand(names: list[str]) -> set[str]:
    out: set[str] = set()
    for name in names:
        if name.startswith("@"):
            out |= expand(groups()[name])
        else:
            out.add(name)
    return out


def allowed_by(unit: Path) -> list[str]:
    """systemd's rule: the first non-~ assignment starts an allow list; ~ entries then remove from it.
    @default is always allowed."""
    allowed: set[str] = set()
    for line in unit.read_text().splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.split("=", 1)[1].strip()
        if value.startswith("~"):
            allowed -= expand(value[1:].split())
        else:
            allowed |= expand(value.split())
    return sorted(allowed | expand(["@default"])) if allowed else []


def available() -> bool:
    return shutil.which("systemd-analyze") is not None
