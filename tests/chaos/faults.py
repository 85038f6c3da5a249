"""A device whose driver misbehaves, through a real protocol plugin (tests/chaos/plugin/chaosfaults).

    path = faulty_device(path, "cdu-2", "raise", monkeypatch)   # cdu-2 is now a chaosfault device
    with DaemonProcess(path) as daemon: ...                       # the daemon loads the plugin itself

The daemon finds the plugin as it finds any installed one: by its entry point in the `dcim.protocols` group,
the plugin directory (package plus dist-info) being on PYTHONPATH. The test process itself never loads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

PLUGIN = Path(__file__).resolve().parent / "plugin"


def faulty_device(path: Path, device_id: str, mode: Literal["raise", "stuck", "block"],
                  monkeypatch: pytest.MonkeyPatch | None, **options: Any) -> Path:
    """Rewrite the configuration at `path` so `device_id` (same kind, interval and placement) is driven by the
    chaosfault plugin in `mode` (with `options`, e.g. trigger= for block), and put the plugin on the
    PYTHONPATH daemon processes inherit (with no monkeypatch: add `plugin_path()` to their environment)."""
    config = yaml.safe_load(path.read_text())
    devices = config["devices"]
    index = next(i for i, d in enumerate(devices) if d["id"] == device_id)
    old = devices[index]
    devices[index] = {
        "id": device_id, "kind": old["kind"], "protocol": "chaosfault", "mode": mode,
        "profile": f"chaosfault-{old['kind']}", "interval": old.get("interval", "1s"),
        **{k: old[k] for k in ("room", "row", "rack", "feed") if k in old}, **options,
    }
    config["profile_dirs"] = [*config.get("profile_dirs", []), str(PLUGIN / "profiles")]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    if monkeypatch is not None:
        monkeypatch.setenv("PYTHONPATH", plugin_path())
    return path


def plugin_path(pythonpath: str | None = None) -> str:
    """PYTHONPATH with the plugin directory first (`pythonpath` or this process's PYTHONPATH after it)."""
    rest = os.environ.get("PYTHONPATH") if pythonpath is None else pythonpath
    return os.pathsep.join([str(PLUGIN), *filter(None, [rest])])
