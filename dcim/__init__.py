"""dcim: telemetry and control daemon for data-centre infrastructure."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version() -> str:
    """The installed distribution's version; in a checkout that was never installed, pyproject.toml's, marked as
    such (the one place the version is written is pyproject.toml)."""
    try:
        return version("dcim")
    except PackageNotFoundError:
        pass
    import tomllib

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"
    return f"{declared}+checkout"


__version__ = _version()
