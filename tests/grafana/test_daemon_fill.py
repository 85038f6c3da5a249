"""The dashboards over what the real daemon writes: `dcim simulate` serves the test hall (SNMP PDUs, Modbus
CDUs, an OPC UA chiller), `dcim run` polls it and publishes to Mosquitto, its ingest writes to InfluxDB 1.6,
and every dashboard query whose measurements the daemon has written runs and returns data.

A leak injected through the simulator's control endpoint gives the rule engine an alarm to write. Queries
over a measurement the daemon has not written (`rack` and `alarm` while the rule engine is not wired into
dcim/app/daemon.py) are listed, and the test skips with that reason after checking all the others; once the
daemon writes them, they are checked too without any change to this file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import DaemonProcess
from tests.grafana.dashboards import interpolate, load_all, panel, panels, queries
from tests.grafana.hall import start_simulators
from tests.grafana.runner import has_data, influxql, run_dashboard
from tests.grafana.schema import identifiers, written_schema
from tests.helpers import require_binary, wait_until_sync
from tests.servers import InfluxDBv1, Mosquitto, http_request

pytestmark = pytest.mark.e2e

DASHBOARDS = load_all()
DEVICE_MEASUREMENTS = {"pdu", "pdu_outlet", "cdu", "chiller"}
# A leak alarm has no pending period: with rules wired it reaches InfluxDB within a poll and a flush.
ALARM_WAIT_S = 20.0


def measurements(url: str, database: str) -> set[str]:
    return {row[0] for s in influxql(url, database, "SHOW MEASUREMENTS") for row in s.get("values", [])}


def devices_written(url: str, database: str) -> dict[str, int]:
    out = {}
    for m in ("pdu", "cdu", "chiller"):
        series = influxql(url, database, f'SHOW TAG VALUES FROM "{m}" WITH KEY = "device"')
        out[m] = sum(len(s.get("values", [])) for s in series)
    return out


def leak_alarm_and_flow(url: str, database: str) -> bool:
    """The leak's alarm is stored, and so are rack metrics with coolant flow (they need a fresh poll of
    every feed PDU and the CDU first)."""
    if not {"alarm", "rack"} <= measurements(url, database):
        return False
    fired = influxql(url, database, "SELECT count(\"state\") FROM \"alarm\" WHERE \"rule\" = 'cdu-leak'")
    flow = influxql(url, database, 'SELECT count("flow_required_lpm") FROM "rack"')
    return bool(fired) and bool(flow)


def hall_power_known(url: str, database: str, from_ms: int) -> bool:
    (target, _) = panel(DASHBOARDS["hall.json"], "IT power against budget")["targets"]
    query = interpolate(target["query"], {"site": "hall-1", "room": ".*"}, from_ms=from_ms,
                        to_ms=time.time_ns() // 1_000_000 + 60_000)
    return has_data(influxql(url, database, query))


@pytest.fixture(scope="module")
def daemon_filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InfluxDBv1, int]]:
    """One run of the daemon for the module's tests (they only read what it wrote): its own broker and
    database, as tests/grafana/faults.py has them."""
    for cls in (Mosquitto, InfluxDBv1):
        require_binary(cls.binary_name, cls.package)
    tmp_path = tmp_path_factory.mktemp("daemon-fill")
    with Mosquitto(tmp_path / "mosquitto") as mosquitto, InfluxDBv1(tmp_path / "influxdb") as influxdb_v1:
        yield from _fill(tmp_path, mosquitto, influxdb_v1)


def _fill(tmp_path: Path, mosquitto: Mosquitto, influxdb_v1: InfluxDBv1) -> Iterator[tuple[InfluxDBv1, int]]:
    started_ms = time.time_ns() // 1_000_000
    path = tmp_path / "dcim.yaml"

    def configure(raw: dict[str, Any]) -> None:
        raw["mqtt"] = {"host": mosquitto.host, "port": mosquitto.port, "prefix": "dcim"}
        raw["influxdb"] = {"url": influxdb_v1.url, "api": "v1", "database": influxdb_v1.database,
                           "flush_interval": "200ms"}
        raw["state_dir"] = str(tmp_path / "state")
        raw["logging"] = {"level": "info", "format": "json"}

    simulate, control, _raw = start_simulators(path, configure, interval="2s")
    with simulate:
        with DaemonProcess(path) as daemon:
            expected = {"pdu": 8, "cdu": 2, "chiller": 1}
            wait_until_sync(lambda: devices_written(influxdb_v1.url, influxdb_v1.database) == expected
                            and DEVICE_MEASUREMENTS <= measurements(influxdb_v1.url, influxdb_v1.database),
                            timeout=90, interval=0.5,
                            message=f"every device in InfluxDB\n{daemon.log()}\n{simulate.log()}")
            # Trouble, so that there is an alarm to show: cdu-leak fires at once (no pending period).
            status, body = http_request("POST", f"http://127.0.0.1:{control}/faults/cdu-1/leak", b"{}",
                                        {"Content-Type": "application/json"})
            assert status == 200, body
            try:
                wait_until_sync(lambda: leak_alarm_and_flow(influxdb_v1.url, influxdb_v1.database),
                                timeout=ALARM_WAIT_S, interval=0.5)
                # The hall's power is drawn only for intervals in which every rack's power was known: on a
                # loaded machine a PDU may miss a poll deadline now and then, so wait for one such interval.
                wait_until_sync(lambda: hall_power_known(influxdb_v1.url, influxdb_v1.database, started_ms),
                                timeout=60, interval=0.5)
            except AssertionError:
                pass  # reported by the test: the daemon wrote no rack or alarm lines
            yield influxdb_v1, started_ms
            assert daemon.stop() == 0, daemon.log()
        simulate.stop()


def keys(url: str, database: str, what: str, measurement: str) -> set[str]:
    series = influxql(url, database, f'SHOW {what} KEYS FROM "{measurement}"')
    return {row[0] for s in series for row in s.get("values", [])}


def test_the_schema_the_checks_use_is_what_the_daemon_writes(daemon_filled: Any) -> None:
    """tests/grafana/schema.py (against which every dashboard query is checked) knows every measurement,
    field and tag the daemon wrote, so "not written" there means not written."""
    influx, _ = daemon_filled
    schema = written_schema()
    for measurement in measurements(influx.url, influx.database):
        assert measurement in schema, measurement
        fields = keys(influx.url, influx.database, "FIELD", measurement)
        tags = keys(influx.url, influx.database, "TAG", measurement)
        assert fields <= schema[measurement].fields, (measurement, fields - schema[measurement].fields)
        assert tags <= schema[measurement].tags, (measurement, tags - schema[measurement].tags)


def test_dashboards_over_what_the_daemon_wrote(daemon_filled: Any) -> None:
    influx, started_ms = daemon_filled
    present = measurements(influx.url, influx.database)
    assert DEVICE_MEASUREMENTS <= present
    unavailable: dict[str, set[str]] = {}
    checked = 0
    to_ms = time.time_ns() // 1_000_000 + 60_000
    for name, dashboard in DASHBOARDS.items():
        needs = {m for q in queries(name, dashboard) if q.kind != "variable" for m in identifiers(q.text)[0]}
        missing = needs - present
        if missing:
            # Check the panels that only need what is there, by dropping the others from a copy.
            unavailable[name] = missing
            dashboard = _only_panels_over(dashboard, present)
        outcome = run_dashboard(influx.url, influx.database, dashboard, from_ms=started_ms - 60_000, to_ms=to_ms,
                                choose_all=True)
        checked += outcome.ran
        # In a quiet hall some queries rightly find nothing (test_queries.py's scenario has all of them):
        # alarm annotations mark events, and trouble counts show their noValue ("0") when nothing matches.
        counts = {f"panel {p['title']!r} A" for p in panels(dashboard)
                  if p["fieldConfig"]["defaults"].get("noValue") is not None}
        empty = [e for e in outcome.empty if not e.startswith("annotation") and e not in counts]
        assert empty == [], f"{name} ({outcome.variables}): no data from {[outcome.sent[e] for e in empty]}"
    assert checked >= 60
    if unavailable:
        pytest.skip(f"the daemon wrote no {sorted(set().union(*unavailable.values()))} lines (a leak was "
                    f"injected: is the rule engine wired into dcim/app/daemon.py?); {checked} queries over the "
                    "rest passed; "
                    f"panels left out: {unavailable}")


def _only_panels_over(dashboard: dict[str, Any], present: set[str]) -> dict[str, Any]:
    variables = [v for v in dashboard["templating"]["list"]
                 if v["type"] != "query" or identifiers(v["query"])[0] & present]
    dropped = {v["name"] for v in dashboard["templating"]["list"]} - {v["name"] for v in variables}

    def ok(panel: dict[str, Any]) -> bool:
        queries = [t["query"] for t in panel.get("targets", [])]
        return all(identifiers(q)[0] <= present for q in queries) and not any(
            re.search(rf"\${name}(?!\w)", q) for q in queries for name in dropped)

    kept = [p for p in dashboard["panels"] if p.get("type") == "row" or ok(p)]
    annotations = [a for a in dashboard["annotations"]["list"]
                   if a.get("builtIn") or identifiers(a["target"]["query"])[0] <= present]
    return {**dashboard, "panels": kept, "templating": {"list": variables},
            "annotations": {"list": annotations}}
