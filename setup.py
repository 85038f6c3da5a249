"""Two build steps that pyproject.toml cannot say: copy the shared trees into the wheel, and build the one
optional C module.

The repository keeps `examples/`, `grafana/` and `systemd/` at its top level (operators and the docs look for them
there); an installed dcim needs them too (`dcim demo` runs the example hall, `dcim share` hands out the dashboards
and units). So the wheel gets a copy under `dcim/share/`, chosen by the same rule that `dcim.core.resources` applies
in a checkout (no Python: grafana/build.py is a developer's generator). Everything else is in pyproject.toml.

The C module (dcim/drivers/modbus/_float32.c: a Modbus float32's shortest digits, the largest single cost of a
poll in Python) is optional: where no C compiler or no Python headers are found, the build goes on without it and
the decode plan uses its Python code, which gives the same values (`dcim --version` says which).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _resources() -> Any:
    """dcim/core/resources.py loaded by path: the build must not import the package (nor its dependencies)."""
    spec = importlib.util.spec_from_file_location("_dcim_resources", HERE / "dcim" / "core" / "resources.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithShared(build_py):
    def run(self) -> None:
        super().run()
        # An editable install reads the checkout's own trees (dcim.core.resources.shared), nothing to copy.
        if getattr(self, "editable_mode", False):
            return
        resources = _resources()
        target = Path(self.build_lib) / "dcim" / resources.SHARE_DIR
        # A build directory left from an earlier build may hold files deleted since: start the copy afresh.
        shutil.rmtree(target, ignore_errors=True)
        for name in resources.SHARED:
            source = HERE / name
            for path in sorted(source.rglob("*")):
                relative = path.relative_to(source)
                if path.is_file() and resources.shipped(relative):
                    self.mkpath(str((target / name / relative).parent))
                    self.copy_file(str(path), str(target / name / relative))


setup(
    cmdclass={"build_py": BuildWithShared},
    # The stable ABI of 3.11 (the oldest Python dcim runs on): the wheel (cp311-abi3) serves every CPython from 3.11 on.
    ext_modules=[Extension("dcim.drivers.modbus._float32", ["dcim/drivers/modbus/_float32.c"], optional=True,
                           py_limited_api=True, define_macros=[("Py_LIMITED_API", "0x030B0000")])],
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
