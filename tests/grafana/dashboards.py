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


# ---- what Grafana makes of the values: field config, mappings, thresholds, transformations ----------


def panel(dashboard: dict[str, Any], title: str, kind: str = "") -> dict[str, Any]:
    (found,) = [p for p in panels(dashboard) if p["title"] == title and (not kind or p["type"] == kind)]
    return found


def field_config(panel: dict[str, Any], name: str) -> dict[str, Any]:
    """The panel's field config for the field called `name`: defaults, then the overrides that match it
    (byName, byRegexp), in order, as Grafana applies them."""
    config = dict(panel["fieldConfig"]["defaults"])
    for override in panel["fieldConfig"]["overrides"]:
        matcher = override["matcher"]
        if (matcher["id"] == "byName" and matcher["options"] == name) or \
                (matcher["id"] == "byRegexp" and re.fullmatch(matcher["options"], name)):
            for prop in override["properties"]:
                config[prop["id"]] = prop["value"]
    return config


def js_string(value: Any) -> str:
    """JavaScript's String(value), which is how Grafana looks a value up in a value mapping."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def display(value: Any, config: dict[str, Any]) -> tuple[str, str]:
    """(text, colour) of one value: the first value or range mapping that matches gives both (a mapping
    without a colour leaves the colour to the thresholds); otherwise the text is the value and the colour
    that of the highest threshold step at or below it."""
    text, colour = js_string(value), None
    for mapping in config.get("mappings", []):
        options = mapping["options"]
        result = None
        if mapping["type"] == "value" and js_string(value) in options:
            result = options[js_string(value)]
        elif mapping["type"] == "range" and isinstance(value, int | float):
            low, high = options.get("from"), options.get("to")
            if (low is None or value >= low) and (high is None or value <= high):
                result = options["result"]
        if result is not None:
            text, colour = result.get("text", text), result.get("color")
            break
    if colour is None:
        steps = config["thresholds"]["steps"]
        colour = steps[0]["color"]
        number = float(value) if isinstance(value, int | float) else None
        for step in steps[1:]:
            if number is not None and number >= step["value"]:
                colour = step["color"]
    return text, colour


def transform(columns: list[str], rows: list[list[Any]], transformations: list[dict[str, Any]]
              ) -> tuple[list[str], list[list[Any]]]:
    """The transformations the dashboards use on one table (merge of one query is the table itself):
    convertFieldType (number, string), sortBy (one field; stable, as Array.prototype.sort), organize
    (renames)."""
    rows = [list(r) for r in rows]
    for step in transformations:
        options = step["options"]
        if step["id"] == "convertFieldType":
            for conversion in options["conversions"]:
                i = columns.index(conversion["targetField"])
                for row in rows:
                    if row[i] is not None:
                        row[i] = float(row[i]) if conversion["destinationType"] == "number" else js_string(row[i])
        elif step["id"] == "sortBy":
            (key,) = options["sort"]
            i = columns.index(key["field"])
            rows.sort(key=lambda r: (r[i] is None, r[i]), reverse=bool(key.get("desc")))
        elif step["id"] == "organize":
            renames = options.get("renameByName", {})
            columns = [renames.get(c, c) for c in columns]
        elif step["id"] != "merge":
            raise AssertionError(f"transformation {step['id']!r} is not emulated here")
    return columns, rows
