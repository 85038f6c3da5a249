"""The layers hold: `lint-imports` (the contracts in pyproject.toml) passes on the tree, and fails, naming the
import, when a scratch copy of the tree gets an import that crosses a layer the wrong way or closes a circle.

    dcim.app  <-  dcim.rules  <-  dcim.drivers  <-  dcim.core   (dcim.simulators: dcim.core and dcim.drivers only)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dcim",)


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports as `make lint` does. It puts its working directory first on sys.path, so in a scratch
    copy it analyses the copy, not the installed tree."""
    # The script installed beside this interpreter (the project's venv), else the one on PATH.
    beside = Path(sys.executable).parent / "lint-imports"
    executable = str(beside) if beside.exists() else shutil.which("lint-imports") or "lint-imports"
    # Wide columns: rich wraps its report at the terminal width, 80 without a terminal.
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run([executable, "--no-cache", "--no-logo"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def scratch_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# (module file, what is appended to it, what the report must say)
VIOLATIONS = [
    pytest.param("dcim/core/samples.py", "import dcim.app.daemon\n",
                 "dcim.core.samples -> dcim.app.daemon", id="core-imports-app"),
    pytest.param("dcim/core/pipeline.py", "from dcim.drivers.base import Driver\n",
                 "dcim.core.pipeline -> dcim.drivers.base", id="core-imports-drivers"),
    pytest.param("dcim/drivers/base.py", "import dcim.rules\n", "dcim.drivers.base -> dcim.rules",
                 id="drivers-import-rules"),
    pytest.param("dcim/rules/alarms.py", "from dcim.app.config import Config\n",
                 "dcim.rules.alarms -> dcim.app.config", id="rules-import-app"),
    # The old circle dcim/config.py <-> rules/config.py is now a crossing of layers.
    pytest.param("dcim/rules/config.py", "import dcim.app.config\n",
                 "dcim.rules.config -> dcim.app.config", id="rules-config-imports-app-config"),
    pytest.param("dcim/simulators/plant.py", "import dcim.rules.alarms\n",
                 "dcim.simulators.plant -> dcim.rules.alarms", id="simulators-import-rules"),
    pytest.param("dcim/simulators/modbus.py", "from dcim.app import daemon\n",
                 "dcim.simulators.modbus -> dcim.app", id="simulators-import-app"),
    pytest.param("dcim/drivers/snmp/driver.py", "import dcim.simulators.plant\n",
                 "dcim.drivers.snmp.driver -> dcim.simulators.plant", id="drivers-import-simulators"),
    # A type is a dependency too: imports under TYPE_CHECKING count.
    pytest.param("dcim/core/outbox.py",
                 "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dcim.rules.store import AlarmStore\n",
                 "dcim.core.outbox -> dcim.rules.store", id="type-checking-import-counts"),
    # The old circle drivers/base.py <-> drivers/profiles.py: base names the profile model for its types.
    pytest.param("dcim/drivers/profile_model.py", "from dcim.drivers.base import DeviceBase\n",
                 "No cycles are allowed in dcim.drivers", id="drivers-base-profiles-circle"),
]


@pytest.mark.parametrize(("module", "addition", "expected"), VIOLATIONS)
def test_a_wrong_import_fails_lint_naming_it(tmp_path: Path, module: str, addition: str, expected: str) -> None:
    tree = scratch_tree(tmp_path)
    source = tree / module
    source.write_text(source.read_text() + "\n" + addition)

    result = lint_imports(tree)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert expected in result.stdout, result.stdout


def test_no_module_imports_itself_back() -> None:
    """No import cycle between any two modules of the product, TYPE_CHECKING imports included. (The
    `acyclic_siblings` contract checks package level too, except between rules' own subpackages.)"""
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False)
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append(" -> ".join((module, *back)))
    assert cycles == []
