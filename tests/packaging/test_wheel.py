"""The wheel, built from this checkout and installed into a fresh virtual environment outside it, is a whole dcim.

Built as a release is (`python -m build`: an sdist, then the wheel from that sdist, so a file MANIFEST.in forgets
is missing here too), installed with its dependencies from the package registry into a venv that sees no
site-packages but its own, and run from a directory outside the checkout with no PYTHONPATH: whatever works here
came from the wheel. One build and one install serve every test of the module (about 2 to 3 minutes of the
suite on 2 busy cores, nearly all of it pip downloading and unpacking the dependencies).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from dcim.core.resources import SHARED, shipped

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ("*.yaml", "*.yml")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    cwd: Path  # outside the checkout

    @property
    def dcim(self) -> Path:
        return self.venv / "bin" / "dcim"

    def run(self, *args: str | Path, timeout: float = 120, prefix: tuple[str, ...] = (),
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(extra_env or {})
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run([*prefix, str(self.dcim), *map(str, args)], cwd=self.cwd, env=env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def private_network() -> tuple[str, ...]:
    """A command prefix that runs a program in a network namespace of its own with only loopback up, so the
    example hall's fixed ports (15020, 16101, 14840, ...) cannot clash with another program on this machine.
    Empty where namespaces are not allowed (not root): then the ports must be free."""
    prefix = ("unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")
    if not shutil.which("unshare") or not shutil.which("ip"):
        return ()
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    return prefix if probe.returncode == 0 else ()


def _run(*args: str | Path, timeout: float = 900) -> None:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    assert not work.resolve().is_relative_to(ROOT), "the test must install outside the checkout"
    _run(sys.executable, "-m", "build", "--outdir", work / "dist", ROOT)
    (wheel,) = (work / "dist").glob("dcim-*.whl")
    venv = work / "venv"
    # No pip inside (ensurepip is slow); this interpreter's pip installs into it. No system site-packages: every
    # dependency must come from the wheel's metadata.
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-compile",
         "--disable-pip-version-check", "--quiet", wheel)
    cwd = work / "elsewhere"
    cwd.mkdir()
    return Installed(wheel, venv, cwd)


def checkout_examples() -> list[Path]:
    return sorted(p for pattern in CONFIGS for p in (ROOT / "examples").rglob(pattern))


def test_version_is_the_installed_distribution(installed: Installed) -> None:
    result = installed.run("--version")
    assert result.returncode == 0, result.stderr
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert result.stdout.startswith(f"dcim {declared} from {installed.venv}"), result.stdout
    # The wheel was built with the C module of the float32 digits (setup.py builds it where it can).
    assert "; float32 digits in C)" in result.stdout, result.stdout


def test_help_lists_every_command_and_an_example(installed: Installed) -> None:
    result = installed.run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("run", "check", "demo", "share", "completion", "alarms", "write", "audit"):
        assert re.search(rf"^\s+{command}\s+\S", result.stdout, re.MULTILINE), (command, result.stdout)
    assert "examples:" in result.stdout


def test_the_wheel_holds_only_the_dcim_package(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"dcim"}, tops
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert not [n for n in names if n.endswith(".py") and "/share/" in n], "grafana/build.py is not for the wheel"


def test_the_wheel_holds_every_data_file_of_the_checkout(installed: Installed) -> None:
    """Profiles, packs, anything non-Python under dcim/ (templates, static files), and the shared trees: a file
    added to the checkout and forgotten in pyproject.toml's package-data or MANIFEST.in is named here."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    package_data = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "dcim").rglob("*")
        if p.is_file() and shipped(p.relative_to(ROOT / "dcim"))
    }
    assert sorted(package_data - names) == []
    for tree in SHARED:
        expected = {f"dcim/share/{tree}/{p.relative_to(ROOT / tree).as_posix()}" for p in (ROOT / tree).rglob("*")
                    if p.is_file() and shipped(p.relative_to(ROOT / tree))}
        assert expected, tree
        assert {n for n in names if n.startswith(f"dcim/share/{tree}/")} == expected


def test_without_a_c_compiler_the_sdist_installs_and_decodes_with_the_python_digits(
        installed: Installed, tmp_path: Path) -> None:
    """The README's way for a platform the wheel is not for: pip builds the sdist. Where no C compiler works (CC
    is a program that fails), the C module of the float32 digits is left out (setup.py makes it optional) and dcim
    gives the same values with its Python code, and says so."""
    (sdist,) = installed.wheel.parent.glob("dcim-*.tar.gz")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                            "--quiet", "--wheel-dir", tmp_path / "out", sdist], env={**env, "CC": "false"},
                           capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert built.returncode == 0, built.stderr[-4000:]
    (wheel,) = (tmp_path / "out").glob("dcim-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if n.endswith(".so")], "the compiler failed: no C module"
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--disable-pip-version-check",
         "--quiet", "--target", tmp_path / "site", wheel)
    # The installed venv's dependencies, this build's dcim first on the path.
    python = str(installed.venv / "bin" / "python")
    run_env = {**env, "PYTHONPATH": str(tmp_path / "site")}
    version = subprocess.run([python, "-m", "dcim.app.cli", "--version"], cwd=installed.cwd, env=run_env,
                             capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert version.returncode == 0, version.stderr
    assert f"from {tmp_path / 'site' / 'dcim'} " in version.stdout, version.stdout
    assert version.stdout.rstrip().endswith("; float32 digits in Python: the C module was not built)"), version.stdout
    decode = (
        "import struct\n"
        "from dcim.drivers.modbus import decodeplan\n"
        "from dcim.drivers.modbus.plan import plan_reads\n"
        "from dcim.drivers.modbus.points import Point\n"
        "assert decodeplan._native_shortest_float32s is None\n"
        "points = [Point(name=f'f{i}', table='input', address=2 * i, type='float32') for i in range(3)]\n"
        "(read,) = plan_reads(points, max_gap=0)\n"
        "out = []\n"
        "decodeplan.ReadDecoder(read).samples(struct.pack('>3f', 230.4, 180.3, 0.5), 'm', 1, out)\n"
        "print([(s.value, s.text) for s in out])\n"
    )
    result = subprocess.run([python, "-c", decode], cwd=installed.cwd, env=run_env, capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[(230.4, '230.4'), (180.3, '180.3'), (0.5, '0.5')]", result.stdout


def test_share_copies_the_shipped_trees_as_they_are_in_the_checkout(installed: Installed) -> None:
    for tree in SHARED:
        target = installed.cwd / "shared" / tree
        result = installed.run("share", tree, target)
        assert result.returncode == 0, result.stderr
        copied = {p.relative_to(target) for p in target.rglob("*") if p.is_file()}
        assert copied, tree
        for relative in copied:
            assert (target / relative).read_bytes() == (ROOT / tree / relative).read_bytes(), relative
        listing = installed.run("share", tree)
        assert listing.returncode == 0 and str(installed.venv) in listing.stdout.splitlines()[0], listing.stdout
    # Again: identical files are left alone; an operator's edited copy is kept unless --force.
    unit = installed.cwd / "shared" / "systemd" / "dcim.service"
    unit.write_text(unit.read_text() + "\n# edited\n")
    again = installed.run("share", "systemd", installed.cwd / "shared" / "systemd")
    assert again.returncode == 1 and "dcim.service: exists and differs" in again.stderr
    assert unit.read_text().endswith("# edited\n")
    assert installed.run("share", "systemd", installed.cwd / "shared" / "systemd", "--force").returncode == 0
    assert unit.read_bytes() == (ROOT / "systemd" / "dcim.service").read_bytes()


SECRET = re.compile(r"^(env|credential):(\S+)$")


def secrets_for(path: Path, credentials: Path) -> dict[str, str]:
    """The environment a server gives `dcim check` for the example's secret references (`env:NAME`,
    `credential:NAME`), with stand-in values: the examples name secrets, they do not contain them."""
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str) and (match := SECRET.match(node)):
            if match[1] == "env":
                env[match[2]] = "not-a-secret"
            else:
                (credentials / match[2]).write_text("not-a-secret\n")

    walk(yaml.safe_load(path.read_text()))
    return env


def test_check_accepts_every_packaged_and_every_checkout_example(installed: Installed) -> None:
    target = installed.cwd / "examples"
    assert installed.run("share", "examples", target).returncode == 0
    packaged = sorted(p for pattern in CONFIGS for p in target.rglob(pattern))
    assert [p.relative_to(target) for p in packaged] == [p.relative_to(ROOT / "examples") for p in checkout_examples()]
    credentials = installed.cwd / "credentials"
    credentials.mkdir()
    for path in [*packaged, *checkout_examples()]:
        result = installed.run("check", "-c", path, extra_env=secrets_for(path, credentials))
        assert result.returncode == 0, f"{path}\n{result.stdout}\n{result.stderr}"
        assert f"{path}: OK" in result.stdout


def test_completion_scripts_name_the_commands(installed: Installed) -> None:
    for shell in ("bash", "zsh"):
        result = installed.run("completion", shell)
        assert result.returncode == 0, result.stderr
        assert "share" in result.stdout and "completion" in result.stdout and "--config" in result.stdout
    bash = installed.run("completion", "bash").stdout
    syntax = subprocess.run(["bash", "-n"], input=bash, capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr


# What the screen says of a device that answered too late: a busy machine, not a broken install.
LATE = re.compile(r"no answer|deadline|timed? ?out", re.IGNORECASE)


def test_demo_runs_the_packaged_hall_with_no_checkout_around(installed: Installed) -> None:
    """`dcim demo` with no -c: the example hall from the package, simulators, broker and daemon for 20 s. In the
    summary printed at the end every device is online with readings (they went the whole way: simulator ->
    driver -> daemon -> broker -> screen), or, on a machine so busy that the process gets a fraction of a core,
    degraded with readings (some points cut off by the poll deadline), offline for answering after its deadline
    or still waiting for its first answer (the example polls its 12 PDUs each second with a 1 s deadline): that
    is the screen telling the truth. Any other state or reason fails, and so does a hall with no device online."""
    hall = yaml.safe_load((ROOT / "examples" / "hall.yaml").read_text())
    result = installed.run("demo", "--duration", "20", timeout=300, prefix=private_network())
    screen = result.stdout[-4000:]
    assert result.returncode == 0, f"{screen}\n{result.stderr[-3000:]}"
    assert "dcim demo: site" in result.stdout, screen
    summary = result.stdout[result.stdout.rindex("dcim demo: site"):]
    live, late = [], []
    for device in hall["devices"]:
        row = re.search(rf"^{re.escape(device['id'])}\s+{device['kind']}\s+(\w+)(.*)$", summary, re.MULTILINE)
        assert row, f"{device['id']} is not in the summary:\n{summary}"
        state, rest = row[1], row[2]
        if state in ("online", "degraded") and re.search(r"\d", rest):  # degraded: some points cut off, late
            live.append(device["id"])
        else:
            assert state == "waiting" or (state == "offline" and LATE.search(rest)), row[0]
            late.append(device["id"])
    assert live, f"no device online:\n{summary}"
    print(f"online with readings: {len(live)}; late on a busy machine: {late or 'none'}")
