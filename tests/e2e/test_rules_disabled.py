"""`rules.enabled: false`: no rule bound and no alarm raised, but the rack and plant metrics are still derived
and published, and the HTTP API (health, metrics, console) is still served. A daemon with the rules off
once had neither: the rule service was not built at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.chaos.daemonlib import get
from tests.e2e.harness import cdu_hall, daemon_in_process, load
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


async def test_rules_disabled_still_derive_rack_metrics_and_serve_http(tmp_path: Path) -> None:
    path = cdu_hall(tmp_path, cdus=1, interval="200ms")  # no broker: the pipeline alone
    raw = yaml.safe_load(path.read_text())
    raw["rules"] = {"enabled": False}
    raw["http"] = {"host": "127.0.0.1", "port": 0}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    async with daemon_in_process(load(path)) as (daemon, _plant, recorder):
        assert daemon.rules is not None and daemon.rules.engine.bound == []
        rack = raw["rooms"][0]["rows"][0]["racks"][0]["id"]
        # The rack's derived metrics, and the CDU's plant metrics, as with the rules on.
        derived = await wait_until(lambda: recorder.batches.get(rack), timeout=10, message="rack metrics")
        assert derived[-1].kind == "rack" and {s.point for s in derived[-1].samples} >= {"cooling_budget_kw"}
        await wait_until(lambda: [b for b in recorder.batches.get("cdu-1", []) if b.kind == "plant"],
                         timeout=10, message="plant metrics")
        port = await wait_until(lambda: daemon.http.port if daemon.http is not None else None, timeout=10)
        status, body = await get(port, "/healthz")
        assert status == 200 and json.loads(body)["ok"] is True, body
        assert daemon.rules.store.active() == []
