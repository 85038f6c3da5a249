"""The worked examples of docs/contributing.md (a rule kind, a hook type), installed for real.

`install_toys(dest)` writes every ```python block of the doc that starts with `# NAME.py` into `dest`, and a
`dcim_toys-0.1.dist-info` directory (METADATA, entry_points.txt) with the entry points of its ```toml
blocks, which is what `pip install` of a package declaring them leaves in site-packages. With `dest` on
PYTHONPATH, `importlib.metadata` finds the entry points, so dcim loads the toys as it loads any plugin.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "contributing.md"


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def modules(text: str) -> dict[str, str]:
    """File name -> source, of the ```python blocks that start with `# NAME.py`."""
    out = {}
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        first = block.splitlines()[0]
        match = re.fullmatch(r"# (\w+\.py)", first)
        if match:
            out[match.group(1)] = block
    return out


def entry_points(text: str) -> dict[str, dict[str, str]]:
    """Group -> name -> object reference, from the ```toml blocks' [project.entry-points.GROUP] tables."""
    out: dict[str, dict[str, str]] = {}
    for block in re.findall(r"```toml\n(.*?)```", text, re.S):
        for group, points in tomllib.loads(block).get("project", {}).get("entry-points", {}).items():
            out.setdefault(group, {}).update(points)
    return out


def install_toys(dest: Path, *titles: str) -> dict[str, dict[str, str]]:
    """Install the examples of the doc's sections `titles` into `dest`; returns their entry points."""
    dest.mkdir(parents=True, exist_ok=True)
    groups: dict[str, dict[str, str]] = {}
    for title in titles:
        text = section(title)
        found = modules(text)
        assert found, f"no `# NAME.py` python block in section {title!r}"
        for name, source in found.items():
            (dest / name).write_text(source)
        for group, points in entry_points(text).items():
            groups.setdefault(group, {}).update(points)
    dist = dest / "dcim_toys-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dcim-toys\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {ref}\n" for name, ref in points.items()) + "\n"
        for group, points in groups.items()
    ))
    return groups


def dcim(plugins: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`dcim ARGS` in a fresh interpreter with `plugins` on PYTHONPATH (as if installed there)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "dcim.app.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
