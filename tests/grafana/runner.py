"""Run a dashboard's queries against a real InfluxDB 1.x the way Grafana would: variables resolved in
order from their own queries, macros filled in, every panel, variable and annotation query executed."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from tests.grafana.dashboards import interpolate, panels, regex_value


def influxql(url: str, database: str, query: str) -> list[dict[str, Any]]:
    """The series of one InfluxQL statement; an InfluxDB error raises AssertionError with the query."""
    params = urllib.parse.urlencode({"db": database, "q": query, "epoch": "ms"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=30) as resp:
        body = json.loads(resp.read())
    (result,) = body["results"]
    if "error" in result:
        raise AssertionError(f"InfluxDB refused {query!r}: {result['error']}")
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def has_data(series: list[dict[str, Any]]) -> bool:
    """At least one non-null value in a column other than time (tags do not count as data)."""
    for s in series:
        columns = s["columns"]
        for row in s.get("values", []):
            if any(v is not None for c, v in zip(columns, row, strict=True) if c != "time"):
                return True
    return False


@dataclass
class Outcome:
    variables: dict[str, list[str]] = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)
    ran: int = 0
    # The InfluxQL sent for each empty query, for the failure message.
    sent: dict[str, str] = field(default_factory=dict)


def run_dashboard(url: str, database: str, dashboard: dict[str, Any], *, from_ms: int, to_ms: int,
                  choose_all: bool = False) -> Outcome:
    """Resolve variables (first value, or All where offered when `choose_all`), then run every query.
    Returns which queries came back empty; a query InfluxDB refuses raises."""
    outcome = Outcome()
    chosen: dict[str, str] = {}

    def fill(text: str) -> str:
        return interpolate(text, chosen, from_ms=from_ms, to_ms=to_ms)

    for var in dashboard["templating"]["list"]:
        if var["type"] == "custom":
            values = [o["value"] for o in var["options"]]
        else:
            series = influxql(url, database, fill(var["query"]))
            values = sorted({row[1] for s in series for row in s.get("values", [])})
            outcome.ran += 1
        outcome.variables[var["name"]] = values
        if not values:
            outcome.empty.append(f"variable ${var['name']}")
            chosen[var["name"]] = "no-value"
            continue
        chosen[var["name"]] = var.get("allValue", ".*") if choose_all and var.get("includeAll") \
            else regex_value(values[:1])
    for panel in panels(dashboard):
        for target in panel["targets"]:
            outcome.ran += 1
            text = fill(target["query"])
            if not has_data(influxql(url, database, text)):
                where = f"panel {panel['title']!r} {target['refId']}"
                outcome.empty.append(where)
                outcome.sent[where] = text
    for anno in dashboard["annotations"]["list"]:
        if anno.get("builtIn"):
            continue
        outcome.ran += 1
        if not has_data(influxql(url, database, fill(anno["target"]["query"]))):
            outcome.empty.append(f"annotation {anno['name']!r}")
    return outcome
