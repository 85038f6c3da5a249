"""tests/systemd/sandbox.py really applies dcim.service's rules (so the daemon tests that run under it
check something): syscall groups and address families from the unit file, and no W+X memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require_binary
from tests.systemd.syscalls import allowed_by

ROOT = Path(__file__).resolve().parents[2]
SANDBOX = Path(__file__).with_name("sandbox.py")

@pytest.fixture(autouse=True)
def _needs_systemd_analyze() -> None:
    # Skipped on a developer's machine without it, failed under CI: CI must run every test.
    require_binary("systemd-analyze", "systemd")


def run_in_sandbox(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "DCIM_TEST_SYSCALLS": ",".join(allowed_by(ROOT / "systemd" / "dcim.service"))}
    return subprocess.run([sys.executable, str(SANDBOX), module, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_allow_list_follows_the_unit() -> None:
    allowed = set(allowed_by(ROOT / "systemd" / "dcim.service"))
    assert {"read", "write", "epoll_wait", "socket", "connect", "sendto", "mmap", "futex"} <= allowed
    assert not {"setrlimit", "sched_setaffinity", "chroot", "setuid", "mount", "reboot"} & allowed


def test_the_sandbox_enforces_the_units_rules() -> None:
    result = run_in_sandbox("tests.systemd.probe_sandbox")
    assert result.returncode == 0, result.stderr
    applied = result.stderr.strip().splitlines()[0]
    if applied != "sandbox: mdwe=yes seccomp=yes":
        message = f"{applied} (seccomp needs Debian's python3-seccomp; MDWE Linux 6.3+)"
        if "seccomp=no" in applied and os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}: scripts/install-test-deps.sh installs python3-seccomp; CI must run this")
        pytest.skip(message)
    assert json.loads(result.stdout) == {
        "inet_socket": "allowed", "unix_socket": "allowed",
        "netlink_socket": "denied", "packet_socket": "denied",
        "sched_setaffinity": "denied", "chroot": "denied", "wx_memory": "denied",
    }


def test_dcim_check_runs_in_the_sandbox() -> None:
    result = run_in_sandbox("dcim.app.cli", "check", "-c", str(ROOT / "examples" / "hall.yaml"))
    assert result.returncode == 0, result.stderr
    assert "hall.yaml: OK" in result.stdout
