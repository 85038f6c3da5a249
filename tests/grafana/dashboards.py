"""Reading the dashboards the way Grafana does: panels (rows and repeats included), targets, variables,
annotations, and the InfluxQL with Grafana's macros and variables filled in."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "grafana" / "dashboards"
DATASOURCE_UID = "dcim-influxdb"


def load_all() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows; row panels themselves excluded."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # panel title, variable name or annotation name
    text: str
    kind: str  # "panel", "variable", "annotation"


def queries(name: str, dashboard: dict[str, Any]) -> Iterator[Query]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield Query(name, f"panel {panel['title']!r} {target['refId']}", target["query"], "panel")
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            yield Query(name, f"variable ${var['name']}", var["query"], "variable")
    for anno in dashboard.get("annotations", {}).get("list", []):
        if not anno.get("builtIn"):
            yield Query(name, f"annotation {anno['name']!r}", anno["target"]["query"], "annotation")


_REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}/])")


def regex_value(values: list[str]) -> str:
    """How Grafana's InfluxDB datasource formats a variable used in a regex: escaped, several OR-ed."""
    escaped = [_REGEX_SPECIAL.sub(r"\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _literal(value: str) -> Callable[[re.Match[str]], str]:
    """A re.sub replacement that inserts `value` as is (a regex value is full of backslashes)."""
    return lambda _match: value


def interpolate(query: str, variables: dict[str, str], *, from_ms: int, to_ms: int,
                interval_s: int = 10) -> str:
    """Grafana's macros and template variables, as the InfluxDB (InfluxQL) datasource fills them in."""
    text = query.replace("$timeFilter", f"time >= {from_ms}ms and time <= {to_ms}ms")
    text = text.replace("$__interval_ms", str(interval_s * 1000))
    text = text.replace("$__interval", f"{interval_s}s").replace("$interval", f"{interval_s}s")
    for name, value in variables.items():
        text = text.replace(f"${{{name}}}", value).replace(f"[[{name}]]", value)
        # Whole names only: $rack must not eat the start of $rack_cdu.
        text = re.sub(rf"\${re.escape(name)}(?!\w)", _literal(value), text)
    leftover = re.findall(r"\$\w+|\[\[\w+\]\]", text)
    if leftover:
        raise AssertionError(f"not interpolated: {leftover} in {text}")
    return text
