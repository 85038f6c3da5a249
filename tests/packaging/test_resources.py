"""dcim.core.resources and the commands on it, in the checkout (test_wheel.py does the same from an installed wheel)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

import dcim
from dcim.app.cli import main
from dcim.core.resources import SHARED, ResourceError, as_path, package_path, shared, shared_files

ROOT = Path(__file__).resolve().parents[2]


def test_in_a_checkout_the_shared_trees_are_the_repositorys_own() -> None:
    for name in SHARED:
        assert shared(name) == ROOT / name
    grafana = shared_files("grafana")
    assert Path("dashboards/hall.json") in grafana and Path("provisioning/dashboards/dcim.yaml") in grafana
    assert Path("build.py") not in grafana, "the generator is a developer's tool, not shipped"
    with pytest.raises(ResourceError, match="no shipped tree 'tests'"):
        shared("tests")


def test_package_data_is_found_through_the_package() -> None:
    assert (package_path("dcim.drivers", "profiles") / "generic-cdu.yaml").is_file()
    assert (package_path("dcim.rules", "packs") / "liquid-rack.yaml").is_file()
    with pytest.raises(ResourceError, match="missing"):
        package_path("dcim.rules", "no-such-dir")


def test_a_package_imported_from_a_zip_is_copied_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "zipped.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zpkg_resources_probe/__init__.py", "")
        z.writestr("zpkg_resources_probe/data/a.yaml", "a: 1\n")
        z.writestr("zpkg_resources_probe/data/sub/b.yaml", "b: 2\n")
    monkeypatch.syspath_prepend(str(archive))
    monkeypatch.delitem(sys.modules, "zpkg_resources_probe", raising=False)
    resource = files("zpkg_resources_probe") / "data"
    assert not isinstance(resource, Path)
    path = as_path(resource)
    assert (path / "a.yaml").read_text() == "a: 1\n" and (path / "sub" / "b.yaml").read_text() == "b: 2\n"


def test_share_lists_copies_and_keeps_an_edited_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["share"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{name:<9} {ROOT / name}" for name in SHARED]
    target = tmp_path / "units"
    assert main(["share", "systemd", str(target)]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(written) == sorted(str(target / p) for p in shared_files("systemd"))
    unit = target / "dcim.service"
    unit.write_text("edited\n")
    assert main(["share", "systemd", str(target)]) == 1
    assert "dcim.service: exists and differs (--force to overwrite)" in capsys.readouterr().err
    assert unit.read_text() == "edited\n"
    assert main(["share", "systemd", str(target), "--force"]) == 0
    assert capsys.readouterr().out.split() == [str(unit)], "identical files are left alone"
    assert unit.read_bytes() == (ROOT / "systemd" / "dcim.service").read_bytes()


def test_version_names_the_version_and_where_it_runs_from(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"dcim {dcim.__version__} from {ROOT / 'dcim'} (Python 3.")
    assert out.rstrip().endswith("; float32 digits in C)"), out


def test_version_says_when_the_float32_digits_run_in_python(tmp_path: Path) -> None:
    from dcim.app.cli import _digits

    assert _digits(tmp_path) == "float32 digits in Python: the C module was not built"
    assert _digits(ROOT / "dcim") == "float32 digits in C"
    # A module file that does not load (a broken build): Python's code runs, and the loader's reason is given.
    broken = tmp_path / "drivers" / "modbus" / "_float32.abi3.so"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a shared object")
    said = _digits(tmp_path)
    assert said.startswith("float32 digits in Python: the C module _float32.abi3.so did not load: "), said


def test_help_of_a_subcommand_has_its_summary_and_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = capsys.readouterr().out
    assert "validate a configuration" in out and "example:\n  dcim check -c /etc/dcim/dcim.yaml" in out


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_completes_files_after_config(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "opcua-cert" in script and "--duration" in script  # plugins' commands and every option
    if shell == "bash":
        assert subprocess.run(["bash", "-n"], input=script, text=True, timeout=30).returncode == 0
        assert "_shtab_dcim_run__c_COMPGEN=_shtab_compgen_files" in script
    else:
        assert "config:_files" in script
