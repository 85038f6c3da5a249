"""Every panel, variable and annotation query of every dashboard, with Grafana's macros and variables
filled in, runs against a real InfluxDB 1.x (influxd 1.6) and returns data.

The database is filled by tests/grafana/fill.py: the plant's values read through the real profiles,
derived rack metrics from rules.metrics, alarm events, all encoded by dcim.core.lineproto with dcim.core.topology's
tags; a scenario with trouble in it, so the panels that count troubles have some to count.
(test_daemon_fill.py does the same with the real daemon and simulators filling the database.)
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from dcim.app.config import parse_config
from tests.grafana.dashboards import load_all
from tests.grafana.fill import synthetic_lines
from tests.grafana.hall import hall_config
from tests.grafana.runner import influxql, run_dashboard

DASHBOARDS = load_all()


@pytest.fixture
def filled(influxdb_v1: Any) -> tuple[Any, int, int]:
    now_ns = time.time_ns()
    lines = synthetic_lines(parse_config(hall_config()), now_ns)
    for start in range(0, len(lines), 5000):
        influxdb_v1.write(lines[start:start + 5000])
    return influxdb_v1, (now_ns // 1_000_000) - 6 * 3600 * 1000, now_ns // 1_000_000 + 60_000


@pytest.mark.parametrize("choose_all", [False, True], ids=["first-value", "all"])
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_query_runs_and_returns_data(filled: tuple[Any, int, int], name: str, choose_all: bool) -> None:
    influx, from_ms, to_ms = filled
    outcome = run_dashboard(influx.url, influx.database, DASHBOARDS[name], from_ms=from_ms, to_ms=to_ms,
                            choose_all=choose_all)
    assert outcome.ran > 0
    assert outcome.empty == [], f"{name} ({outcome.variables}): no data from {outcome.empty}"


def test_variables_pick_what_the_panels_need(filled: tuple[Any, int, int]) -> None:
    influx, from_ms, to_ms = filled
    rack = run_dashboard(influx.url, influx.database, DASHBOARDS["rack.json"], from_ms=from_ms, to_ms=to_ms)
    assert rack.variables["rack"] == ["A01", "A02", "B01", "B02"]
    assert rack.variables["rack_cdu"] == ["cdu-1"]  # A01's loop, from the rack lines' cdu tag
    cooling = run_dashboard(influx.url, influx.database, DASHBOARDS["cooling.json"], from_ms=from_ms, to_ms=to_ms)
    assert cooling.variables["cdu"] == ["cdu-1", "cdu-2"]


def test_trouble_shows(filled: tuple[Any, int, int]) -> None:
    """The hall's stat panels count what the scenario broke: one rack over budget, one without
    redundancy, and the firing alarms (the leak resolved, so it is not among them)."""
    influx, from_ms, to_ms = filled
    hall = DASHBOARDS["hall.json"]
    from tests.grafana.dashboards import interpolate

    def stat(title: str) -> float:
        (panel,) = [p for p in hall["panels"] if p.get("title") == title]
        query = interpolate(panel["targets"][0]["query"], {"site": "hall-1", "room": ".*"},
                            from_ms=from_ms, to_ms=to_ms)
        (series,) = influxql(influx.url, influx.database, query)
        return float(series["values"][0][1])

    assert stat("Racks over budget") == 1
    assert stat("Racks without redundancy") == 1
    assert stat("Alarms firing") == 3
    assert 0 < stat("Hall utilization") < 100
