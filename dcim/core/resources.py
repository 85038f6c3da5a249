"""Files that ship with dcim, found through importlib.resources wherever the package is installed.

Two kinds:

- data of a package: the device profiles (`dcim.drivers`, `profiles/`) and the rule packs (`dcim.rules`,
  `packs/`), kept beside their code: `package_path("dcim.drivers", "profiles")`.
- the shared trees, `examples`, `grafana` and `systemd`: the repository keeps them at its top level, and the wheel
  carries a copy under `dcim/share/` (setup.py copies them in at build time, without grafana's generator).
  `shared("grafana")` finds the installed copy, or in a checkout (an editable install, or `python -m dcim` from the
  repository) the repository's own directory, so a developer's edit is seen without a rebuild.

Paths are real filesystem paths: pip installs a wheel unpacked, so `files()` already is one; a package imported
from a zip archive is copied out once into a temporary directory that lives as long as the process.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

SHARED = ("examples", "grafana", "systemd")
SHARE_DIR = "share"  # dcim/share/<name> in the wheel


class ResourceError(LookupError):
    """A shipped file or directory is not where the package says it is: a broken install."""


@cache
def _scratch() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="dcim-resources-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def _copy_out(resource: Traversable, target: Path) -> None:
    if resource.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for child in resource.iterdir():
            _copy_out(child, target / child.name)
    else:
        target.write_bytes(resource.read_bytes())


def as_path(resource: Traversable) -> Path:
    """`resource` as a filesystem path; copied out when the package is not on the filesystem (callers cache)."""
    if isinstance(resource, Path):
        return resource
    target = _scratch() / str(len(list(_scratch().iterdir()))) / resource.name
    _copy_out(resource, target)
    return target


@cache
def package_path(package: str, name: str) -> Path:
    """The data file or directory `name` shipped inside `package` (e.g. "dcim.drivers", "profiles")."""
    resource = files(package) / name
    if not resource.is_dir() and not resource.is_file():
        raise ResourceError(f"{package}: {name} is missing from the installed package")
    return as_path(resource)


def _checkout_root() -> Path | None:
    """The repository around an uninstalled or editable `dcim`, recognised by its pyproject.toml."""
    package = files("dcim")
    if not isinstance(package, Path):
        return None
    root = package.resolve().parent
    return root if (root / "pyproject.toml").is_file() else None


@cache
def shared(name: str) -> Path:
    """One of the shared trees (`SHARED`): the wheel's copy under dcim/share/, else the checkout's top level."""
    if name not in SHARED:
        raise ResourceError(f"no shipped tree {name!r} (there are: {', '.join(SHARED)})")
    installed = files("dcim") / SHARE_DIR / name
    if installed.is_dir():
        return as_path(installed)
    root = _checkout_root()
    if root is not None and (root / name).is_dir():
        return root / name
    raise ResourceError(f"{name}: not in the installed package (dcim/{SHARE_DIR}/{name}) nor in a checkout; "
                        "reinstall dcim from its wheel")


def shared_files(name: str) -> list[Path]:
    """Every file of a shared tree, sorted, relative to the tree (what `dcim share` copies)."""
    root = shared(name)
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and shipped(p.relative_to(root)))


def shipped(relative: Path) -> bool:
    """Whether a file of a shared tree belongs in the package: not Python (grafana/build.py is a developer's
    generator), no caches, nothing hidden. setup.py copies by the same rule, so a checkout shows what a wheel has."""
    parts = relative.parts
    return (relative.suffix not in (".py", ".pyc") and "__pycache__" not in parts
            and not any(part.startswith(".") for part in parts))
