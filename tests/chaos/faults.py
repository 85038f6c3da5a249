"""A device whose driver misbehaves, through a real protocol plugin (tests/chaos/plugin/chaosfaults).

    path = faulty_device(path, "cdu-2", "raise", monkeypatch)   # cdu-2 is now a chaosfault device
    with DaemonProcess(path) as daemon: ...                       # the daemon loads the plugin itself

The daemon finds the plugin as it finds any installed one: by its entry point in the `dcim.protocols` group,
the plugin directory (package plus dist-info) being on PYTHONPATH. The test process itself never loads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pytest
import yaml

PLUGIN = Path(__file__).resolve().parent / "plugin"


def faulty_device(path: Path, device_id: str, mode: Literal["raise", "stuck"],
                  monkeypatch: pytest.MonkeyPatch) -> Path:
    """Rewrite the configuration at `path` so `device_id` (same kind, interval and placement) is driven by the
    chaosfault plugin in `mode`, and put the plugin on the PYTHONPATH daemon processes inherit."""
    config = yaml.safe_load(path.read_text())
    devices = config["devices"]
    index = next(i for i, d in enumerate(devices) if d["id"] == device_id)
    old = devices[index]
    devices[index] = {
        "id": device_id, "kind": old["kind"], "protocol": "chaosfault", "mode": mode,
        "profile": f"chaosfault-{old['kind']}", "interval": old.get("interval", "1s"),
        **{k: old[k] for k in ("room", "row", "rack", "feed") if k in old},
    }
    config["profile_dirs"] = [*config.get("profile_dirs", []), str(PLUGIN / "profiles")]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    paths = [str(PLUGIN), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    return path
