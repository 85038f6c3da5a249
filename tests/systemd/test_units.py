"""The unit files: systemd-analyze accepts them, the hardening scores in the OK band, and the daemon's
imports survive MemoryDenyWriteExecute.

`systemd-analyze verify` checks that ExecStart= names an executable, and /opt/dcim is not installed here:
the test verifies a temporary copy whose /opt/dcim/bin/dcim is replaced by this venv's own `dcim` console
script (the same entry point a deployment installs), and checks separately that the untouched files fail
on nothing but that path. `systemd-analyze security --offline=true` (systemd 252+) scores a unit file
without a running service manager.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require_binary

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "systemd").glob("*.service"))
INSTALLED = "/opt/dcim/bin/dcim"
VENV_DCIM = Path(sys.executable).parent / "dcim"

@pytest.fixture(autouse=True)
def _needs_systemd_analyze() -> None:
    # Skipped on a developer's machine without it, failed under CI: CI must run every test.
    require_binary("systemd-analyze", "systemd")


def _copy_with_local_dcim(tmp_path: Path) -> list[Path]:
    assert VENV_DCIM.exists(), f"{VENV_DCIM} missing: is the project installed in this venv?"
    out = []
    for unit in UNITS:
        target = tmp_path / unit.name
        target.write_text(unit.read_text().replace(INSTALLED, str(VENV_DCIM)))
        out.append(target)
    return out


def _directives(unit: Path) -> dict[str, list[str]]:
    # systemd allows a key to repeat; configparser would keep the last, so collect them by hand.
    values: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_there_are_three_units() -> None:
    assert [u.name for u in UNITS] == ["dcim-ingest.service", "dcim-simulate.service", "dcim.service"]


def test_verify_accepts_the_units(tmp_path: Path) -> None:
    copies = _copy_with_local_dcim(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", *map(str, copies)],
                            capture_output=True, text=True, timeout=60)
    # Unknown keys, bad values and missing binaries all print here; a clean verify prints nothing.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_verify_only_misses_the_installed_binary() -> None:
    result = subprocess.run(["systemd-analyze", "verify", *map(str, UNITS)],
                            capture_output=True, text=True, timeout=60)
    complaints = [line for line in result.stderr.splitlines() if line.strip()]
    assert complaints, "expected verify to notice that /opt/dcim is not installed here"
    assert all(f"Command {INSTALLED} is not executable" in line for line in complaints), complaints


def test_verify_rejects_a_broken_unit(tmp_path: Path) -> None:
    """The check is live: a typo'd directive does not pass."""
    copy = _copy_with_local_dcim(tmp_path)[-1]
    text = copy.read_text().replace("ProtectSystem=strict", "ProtectSystem=strcit")
    copy.write_text(text.replace("ProtectHome=", "ProtectHmoe="))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)],
                            capture_output=True, text=True, timeout=60)
    # verify exits 0 on ignored lines: that is why test_verify_accepts_the_units demands an empty stderr.
    assert "strcit" in result.stderr and "ProtectHmoe" in result.stderr


@pytest.mark.parametrize("name", ["dcim.service", "dcim-ingest.service", "dcim-simulate.service"])
def test_security_exposure_is_ok(tmp_path: Path, name: str) -> None:
    copy = next(p for p in _copy_with_local_dcim(tmp_path) if p.name == name)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(copy)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    level, band = float(match.group(1)), match.group(2)
    # systemd's bands: PERFECT 0, SAFE < 1, OK < 5, MEDIUM, EXPOSED, UNSAFE, DANGEROUS.
    assert band in ("PERFECT", "SAFE", "OK"), (level, band)
    assert level <= 2.0, result.stdout


def test_daemon_unit_contract() -> None:
    unit = _directives(ROOT / "systemd" / "dcim.service")
    expect = {
        "Type": "notify", "Restart": "on-failure", "DynamicUser": "yes", "StateDirectory": "dcim",
        "ConfigurationDirectory": "dcim", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "MemoryDenyWriteExecute": "yes",
        "ExecStart": f"{INSTALLED} run -c /etc/dcim/dcim.yaml",
    }
    for key, value in expect.items():
        assert unit.get(key, [None])[0] == value, key
    assert "@system-service" in unit["SystemCallFilter"]
    assert unit["WatchdogSec"] and unit["LoadCredential"] == ["dcim:/etc/dcim/credentials"]
    ingest = _directives(ROOT / "systemd" / "dcim-ingest.service")
    assert ingest["ExecStart"] == [f"{INSTALLED} ingest -c /etc/dcim/dcim.yaml"]
    simulate = _directives(ROOT / "systemd" / "dcim-simulate.service")
    assert simulate["ExecStart"] == [f"{INSTALLED} simulate -c /etc/dcim/dcim.yaml"]


MDWE_PROGRAM = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError:
    pass
else:
    sys.exit("W+X mapping was allowed: MDWE is not in force")
import asyncio, sqlite3, ssl
import aiomqtt, asyncua, pymodbus.client, pysnmp.hlapi.v3arch.asyncio, influxdb_client, cryptography.x509
import dcim.app.cli, dcim.app.daemon, dcim.app.sdnotify
import dcim.drivers.profiles, dcim.rules.service, dcim.simulators.plant
import dcim.drivers.modbus.driver, dcim.drivers.opcua.driver, dcim.drivers.snmp.driver
from cryptography.hazmat.primitives.asymmetric import ec
from tests.helpers import require_binary
ec.generate_private_key(ec.SECP256R1())
ssl.create_default_context()
db = sqlite3.connect(":memory:")
db.execute("create table t (x)")
db.execute("insert into t values (1)")
async def main() -> None:
    await asyncio.sleep(0)
asyncio.run(main())
# The daemon's own start-up path: load and validate a configuration with every profile.
sys.exit(dcim.app.cli.main(["check", "-c", sys.argv[1]]) or print("ok"))
"""


def test_imports_survive_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes refuses writable+executable memory. Linux 6.3+ offers the same rule to
    any process (prctl PR_SET_MDWE), so the daemon's imports, crypto, SQLite and `dcim check` run under it
    here. (The daemon's full run under the rule is not tested: that needs systemd as PID 1.)"""
    result = subprocess.run([sys.executable, "-c", MDWE_PROGRAM, str(ROOT / "examples" / "hall.yaml")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    if result.returncode == 77:
        pytest.skip("kernel has no PR_SET_MDWE")
    assert result.returncode == 0, result.stderr
    # `dcim check` validated the configuration, then the program reached its end.
    assert "hall.yaml: OK" in result.stdout and result.stdout.splitlines()[-1] == "ok", result.stdout
