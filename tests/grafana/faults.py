"""One run of the real daemon over the simulated test hall with faults injected, in phases, for the
dashboard tests (tests/grafana/test_dashboard_faults.py) to share: `dcim simulate` serves the hall,
`dcim run` polls it, publishes to Mosquitto, and its ingest writes InfluxDB 1.6.

Phases, each ended by what the database shows (never by a clock):

    start        every device written; the chiller (OPC UA, subscribe mode) running
    leak         cdu-1 leaks: the cdu-leak alarm fires and is stored
    ack          alice acknowledges it over the HTTP API: the stored alarm says so
    chiller_ok   the chiller has held still long enough for its heartbeat to fill a few intervals, and
                 every rack's power has been known for a few ticks
    pdu_dead     pdu-a01a stops answering: stored offline, its communication alarm fired, rack A01
                 without power, the other racks with
    chiller_trip the chiller trips: status tripped, COP 0
    chiller_dead the chiller's server stops: stored offline, its lines STALE

`Run.marks` holds the time (ms) each phase began.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.harness import DaemonProcess
from tests.grafana.hall import start_simulators
from tests.grafana.runner import influxql
from tests.helpers import wait_until_sync
from tests.servers import InfluxDBv1, Mosquitto, http_request

TOKEN = "grafana-test-token"
INTERVAL_S = 2.0
PUBLISHING_S = 1.0
DEVICES = {"pdu": 8, "cdu": 2, "chiller": 1}
RACKS = {"A01", "A02", "B01", "B02"}


@dataclass
class Run:
    url: str
    database: str
    marks: dict[str, int] = field(default_factory=dict)
    end_ms: int = 0

    def q(self, query: str) -> list[dict[str, Any]]:
        return influxql(self.url, self.database, query)

    def scalar(self, query: str) -> Any:
        series = self.q(query)
        return series[0]["values"][0][1] if series and series[0].get("values") else None


def _clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _http_port(daemon: DaemonProcess) -> int | None:
    for line in daemon.log_path.read_text(errors="replace").splitlines():
        if "http api listening" in line:
            try:
                return int(json.loads(line)["port"])
            except (ValueError, KeyError):
                return None
    return None


def fault(control: int, device: str, name: str) -> None:
    status, body = http_request("POST", f"http://127.0.0.1:{control}/faults/{device}/{name}", b"{}",
                                {"Content-Type": "application/json"})
    assert status == 200, body


def fill(workdir: Path) -> Iterator[Run]:
    """Start the servers, the simulators and the daemon, go through the phases, yield the Run; stop all."""
    workdir.mkdir(parents=True, exist_ok=True)
    mosquitto = Mosquitto(workdir / "mosquitto")
    influx = InfluxDBv1(workdir / "influxdb")
    mosquitto.start()
    try:
        influx.start()
        try:
            yield from _phases(workdir, mosquitto, influx)
        finally:
            influx.close()
    finally:
        mosquitto.close()


def _phases(workdir: Path, mosquitto: Mosquitto, influx: InfluxDBv1) -> Iterator[Run]:
    token = workdir / "http-token"
    token.write_text(TOKEN)

    def configure(raw: dict[str, Any]) -> None:
        raw["devices"][-1]["publishing_interval"] = f"{PUBLISHING_S:g}s"  # the chiller
        raw["mqtt"] = {"host": mosquitto.host, "port": mosquitto.port, "prefix": "dcim"}
        raw["influxdb"] = {"url": influx.url, "api": "v1", "database": influx.database, "flush_interval": "200ms"}
        raw["http"] = {"enabled": True, "host": "127.0.0.1", "port": 0, "token": f"file:{token}"}
        # A device that stops answering raises its communication alarm after 4 s instead of 30.
        raw["rules"] = {"communication": {"for": "4s"}}
        raw["state_dir"] = str(workdir / "state")
        raw["logging"] = {"level": "info", "format": "json"}

    path = workdir / "dcim.yaml"
    run = Run(influx.url, influx.database)
    simulate, control, _raw = start_simulators(path, configure, interval=f"{INTERVAL_S:g}s")
    with simulate:
        with DaemonProcess(path) as daemon:
            def logs() -> str:
                return f"{daemon.log()}\n{simulate.log()}"

            run.marks["start"] = _clock_ms()
            wait_until_sync(lambda: _devices_written(run) == DEVICES, timeout=90, interval=0.5,
                            message=f"every device in InfluxDB\n{logs()}")
            http = wait_until_sync(lambda: _http_port(daemon), timeout=30, interval=0.2,
                                   message=f"http api listening\n{logs()}")

            run.marks["leak"] = _clock_ms()
            fault(control, "cdu-1", "leak")
            wait_until_sync(lambda: run.scalar("SELECT count(\"state\") FROM \"alarm\" WHERE \"rule\" = 'cdu-leak'"),
                            timeout=30, interval=0.5, message=f"the leak alarm stored\n{logs()}")

            run.marks["ack"] = _clock_ms()
            status, body = http_request(
                "POST", f"http://127.0.0.1:{http}/api/v1/alarms/cdu-leak/cdu-1/ack",
                json.dumps({"user": "alice", "comment": "valve closed"}).encode(),
                {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
            assert status == 200, body
            wait_until_sync(lambda: run.scalar("SELECT last(\"ack_by\") FROM \"alarm\" WHERE \"rule\" = 'cdu-leak'")
                            == "alice", timeout=30, interval=0.5, message=f"the acknowledgement stored\n{logs()}")

            # The chiller's condenser water holds still in the plant: only the heartbeat stores it.
            run.marks["chiller_ok"] = _clock_ms()
            since = f"time >= {run.marks['chiller_ok']}ms"
            wait_until_sync(lambda: (run.scalar(f'SELECT count("condenser_entering_temp_c") FROM "chiller" '
                                                f"WHERE {since}") or 0) >= 6,
                            timeout=60, interval=0.5, message=f"chiller heartbeat points\n{logs()}")

            # ... and every rack with its power known for a few ticks: a complete hall before the PDU dies.
            wait_until_sync(lambda: _racks_with_power(run, since) == RACKS, timeout=60, interval=0.5,
                            message=f"every rack's power\n{logs()}")

            run.marks["pdu_dead"] = _clock_ms()
            fault(control, "pdu-a01a", "no_response")
            since = f"time >= {run.marks['pdu_dead']}ms"
            wait_until_sync(lambda: run.scalar("SELECT last(\"online\") FROM \"device_status\" WHERE "
                                               "\"device\" = 'pdu-a01a'") is False,
                            timeout=60, interval=0.5, message=f"pdu-a01a stored offline\n{logs()}")
            wait_until_sync(lambda: run.scalar("SELECT last(\"state\") FROM \"alarm\" WHERE \"rule\" = "
                                               "'device-offline' AND \"device\" = 'pdu-a01a'") == "firing",
                            timeout=60, interval=0.5, message=f"pdu-a01a's communication alarm\n{logs()}")
            # Several ticks of the rule engine with A01 missing and B01 present.
            wait_until_sync(lambda: (run.scalar(f"SELECT count(\"quality\") FROM \"rack\" WHERE \"rack\" = 'A01' "
                                                f"AND {since}") or 0) >= 10
                            and (run.scalar(f"SELECT count(\"power_kw\") FROM \"rack\" WHERE \"rack\" = 'B01' "
                                            f"AND {since}") or 0) >= 10,
                            timeout=60, interval=0.5, message=f"racks after the PDU died\n{logs()}")

            run.marks["chiller_trip"] = _clock_ms()
            fault(control, "chiller-1", "trip")
            since = f"time >= {run.marks['chiller_trip']}ms"
            wait_until_sync(lambda: (run.scalar(f"SELECT count(\"cop\") FROM \"chiller\" WHERE \"cop\" = 0 AND "
                                                f"{since}") or 0) >= 10,
                            timeout=60, interval=0.5, message=f"the tripped chiller's COP\n{logs()}")

            run.marks["chiller_dead"] = _clock_ms()
            fault(control, "chiller-1", "no_response")
            since = f"time >= {run.marks['chiller_dead']}ms"
            wait_until_sync(lambda: run.scalar("SELECT last(\"online\") FROM \"device_status\" WHERE "
                                               "\"device\" = 'chiller-1'") is False
                            and (run.scalar(f"SELECT count(\"quality\") FROM \"chiller\" WHERE {since}") or 0) >= 6,
                            timeout=60, interval=0.5, message=f"the chiller stored offline\n{logs()}")
            run.end_ms = _clock_ms()
            yield run
            assert daemon.stop() == 0, daemon.log()
        simulate.stop()


def _racks_with_power(run: Run, since: str) -> set[str]:
    series = run.q(f'SELECT count("power_kw") FROM "rack" WHERE {since} GROUP BY "rack"')
    return {s["tags"]["rack"] for s in series if s["values"][0][1] >= 3}


def _devices_written(run: Run) -> dict[str, int]:
    out = {}
    for m in DEVICES:
        series = run.q(f'SHOW TAG VALUES FROM "{m}" WITH KEY = "device"')
        out[m] = sum(len(s.get("values", [])) for s in series)
    return out
