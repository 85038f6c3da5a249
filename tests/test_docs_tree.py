"""The documentation matches the tree and stands alone: the README's directory table names exactly the
repository's top-level directories, docs/architecture.md names every package and only paths that exist, every
relative link resolves, and nothing points at a file outside the repository."""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dcim",)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")


def ignored_names() -> list[str]:
    """Top-level names .gitignore leaves out (build output, venvs, state), as fnmatch patterns."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return [line.strip().strip("/") for line in lines if line.strip() and not line.startswith("#")]


def top_level_directories() -> set[str]:
    patterns = ignored_names()
    return {
        path.name for path in ROOT.iterdir()
        if path.is_dir() and not path.name.startswith(".")
        and not any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)
    }


def section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_readme_directory_table_names_exactly_the_top_level_directories() -> None:
    architecture = section((ROOT / "README.md").read_text(), "## Architecture")
    rows = re.findall(r"^\| `([^`]+)/` \|", architecture, flags=re.MULTILINE)
    assert len(rows) == len(set(rows)), rows
    assert set(rows) == top_level_directories()


def test_readme_links_the_architecture_and_contributing_docs() -> None:
    architecture = section((ROOT / "README.md").read_text(), "## Architecture")
    assert "(docs/architecture.md)" in architecture
    assert "(docs/contributing.md)" in architecture


def product_packages() -> set[str]:
    """Every package of the product as a path with a trailing slash: `dcim/core/`, `dcim/rules/notify/`, ..."""
    return {
        init.parent.relative_to(ROOT).as_posix() + "/"
        for top in PACKAGES for init in (ROOT / top).rglob("__init__.py")
    }


def test_architecture_names_every_package() -> None:
    named = set(CODE_SPAN.findall((ROOT / "docs" / "architecture.md").read_text()))
    missing = sorted(product_packages() - named)
    assert missing == [], f"docs/architecture.md does not name {missing}"


def test_architecture_names_only_paths_that_exist() -> None:
    """A path in a code span that starts at a top-level directory must exist (globs must match something);
    `drivers/<protocol>/config.py` and `{prefix}/...` are patterns, not paths."""
    tops = top_level_directories()
    wrong = []
    for span in CODE_SPAN.findall((ROOT / "docs" / "architecture.md").read_text()):
        if "/" not in span or span.split("/")[0] not in tops or re.search(r"[<>{}\s]", span):
            continue
        if not any(ROOT.glob(span.rstrip("/"))):
            wrong.append(span)
    assert wrong == []


def test_architecture_names_the_core_modules() -> None:
    """The core is what every layer stands on: each of its modules is on the map."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(CODE_SPAN.findall(text))
    modules = {p.name for p in (ROOT / "dcim" / "core").glob("*.py") if p.name != "__init__.py"}
    missing = sorted(m for m in modules if m not in named and f"dcim/core/{m}" not in named)
    assert missing == [], f"docs/architecture.md does not name dcim/core/{missing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE)
    return {slug(h) for h in headings}


def test_relative_links_resolve() -> None:
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            path_part, _, anchor = target.partition("#")
            path = (doc.parent / path_part).resolve() if path_part else doc
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


# Built from parts, so that this file does not match itself.
OUTSIDE = re.compile("|".join([r"\bREFERENCE\.md", r"\bDESIGN\.md", "shared" + "/"]))
SKIP_DIRS = {".git", ".venv", "__pycache__", "build", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".demo",
             "state", ".import_linter_cache"}


def repository_files() -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        files += [Path(folder) / name for name in sorted(names)]
    return files


def test_nothing_points_outside_the_repository() -> None:
    found = []
    for path in repository_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []
