"""The HTTP API over a real socket and the real alarm store."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from dcim.app.config import HttpConfig
from dcim.app.http_api import HttpApi
from dcim.core.audit import AuditLog
from dcim.core.metrics import REGISTRY
from dcim.rules.clock import FakeClock
from dcim.rules.store import AlarmStore
from tests.http_api.conftest import TOKEN, ApiFactory, auth, serving

NS_MIN = 60 * 1_000_000_000


async def test_binds_localhost_on_an_ephemeral_port(api: ApiFactory, http: aiohttp.ClientSession) -> None:
    async with api() as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0")
        async with http.get(url + "/healthz") as r:
            assert r.status == 200 and await r.json() == {"ok": True}
    # Closed when cancelled: the port refuses connections.
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(url + "/healthz"):
            pass


async def test_healthz_reports_the_health_callable(api: ApiFactory, http: aiohttp.ClientSession) -> None:
    state = {"ok": True, "devices": {"cdu-1": "online"}}
    async with api(health=lambda: dict(state)) as url:
        async with http.get(url + "/healthz") as r:
            assert r.status == 200 and (await r.json())["devices"] == {"cdu-1": "online"}
        state["ok"] = False
        async with http.get(url + "/healthz") as r:
            assert r.status == 503 and (await r.json())["ok"] is False

    async def async_health() -> dict[str, object]:
        return {"ok": False, "reason": "broker unreachable"}

    async with api(health=async_health) as url:
        async with http.get(url + "/healthz") as r:
            assert r.status == 503 and (await r.json())["reason"] == "broker unreachable"

    def broken() -> dict[str, object]:
        raise RuntimeError("boom")

    async with api(health=broken) as url:
        async with http.get(url + "/healthz") as r:
            assert r.status == 503 and "RuntimeError" in (await r.json())["error"]


_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? \S+$')


async def test_metrics_parse_as_prometheus_text(api: ApiFactory, http: aiohttp.ClientSession) -> None:
    REGISTRY.counter("dcim_test_http_total", "A test counter", ("device",)).inc(device='odd "name"\\x')
    async with api() as url:
        async with http.get(url + "/healthz"):
            pass
        async with http.get(url + "/metrics") as r:
            assert r.status == 200 and r.content_type == "text/plain"
            assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            text = await r.text()
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("counter", "gauge", "summary", "untyped")
            typed.add(name)
            continue
        assert _SAMPLE.match(line), line
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        assert name in typed or re.sub(r"_(sum|count)$", "", name) in typed, line
        float(line.rsplit(" ", 1)[1])
    assert 'dcim_http_requests_total{route="/healthz",code="200"}' in text
    assert 'dcim_test_http_total{device="odd \\"name\\"\\\\x"} 1' in text


async def test_list_active_and_history(api: ApiFactory, http: aiohttp.ClientSession) -> None:
    async with api() as url:
        async with http.get(url + "/api/v1/alarms") as r:
            alarms = (await r.json())["alarms"]
        assert [a["key"] for a in alarms] == ["rack-power/A01", "rack-power/A02"]
        assert alarms[0]["severity"] == "critical" and alarms[0]["state"] == "firing"
        async with http.get(url + "/api/v1/alarms?all=1&limit=2") as r:
            history = (await r.json())["alarms"]
        assert [a["key"] for a in history] == ["rack-flow/A03", "rack-power/A02"]
        async with http.get(url + "/api/v1/alarms?all=1&limit=x") as r:
            assert r.status == 400 and "limit" in (await r.json())["error"]
        async with http.get(url + "/api/v1/alarms/rack-power/A01") as r:
            assert (await r.json())["alarm"]["value"] == 61.5
        async with http.get(url + "/api/v1/alarms/rack-power%2FA02") as r:  # the slash encoded
            assert (await r.json())["alarm"]["key"] == "rack-power/A02"
        async with http.get(url + "/api/v1/alarms/nope") as r:
            assert r.status == 404 and "nope" in (await r.json())["error"]


async def test_state_changes_need_the_token(api: ApiFactory, http: aiohttp.ClientSession, store: AlarmStore) -> None:
    async with api() as url:
        ack = url + "/api/v1/alarms/rack-power/A01/ack"
        async with http.post(ack) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.post(ack, headers={"Authorization": "Basic dXNlcjpwdw=="}) as r:
            assert r.status == 401
        async with http.post(ack, headers=auth("wrong")) as r:
            assert r.status == 403 and (await r.json())["error"] == "wrong token"
        async with http.delete(url + "/api/v1/alarms/rack-power/A01/shelve", headers=auth(TOKEN + "x")) as r:
            assert r.status == 403
    assert store.get("rack-power/A01").acknowledged is False


async def test_without_a_token_state_changes_are_refused(
    api: ApiFactory, http: aiohttp.ClientSession, store: AlarmStore
) -> None:
    async with api(token=None) as url:
        async with http.post(url + "/api/v1/alarms/rack-power/A01/ack", headers=auth()) as r:
            assert r.status == 403 and "no http.token is configured" in (await r.json())["error"]
        async with http.get(url + "/api/v1/alarms") as r:  # reading is still allowed
            assert r.status == 200
    assert store.get("rack-power/A01").acknowledged is False


async def test_acknowledge_round_trip(api: ApiFactory, http: aiohttp.ClientSession, store: AlarmStore) -> None:
    async with api() as url:
        async with http.post(url + "/api/v1/alarms/rack-power/A01/ack", headers=auth(),
                             json={"user": "alice", "comment": "on it"}) as r:
            assert r.status == 200
            assert (await r.json())["alarm"]["ack_by"] == "alice"
        async with http.get(url + "/api/v1/alarms") as r:
            first = (await r.json())["alarms"][0]
        assert first["acknowledged"] is True and first["ack_comment"] == "on it"
        # An empty body is fine (user "api"); a resolved alarm cannot be acknowledged.
        async with http.post(url + "/api/v1/alarms/rack-power/A02/ack", headers=auth()) as r:
            assert r.status == 200 and (await r.json())["alarm"]["ack_by"] == "api"
        async with http.post(url + "/api/v1/alarms/rack-flow/A03/ack", headers=auth()) as r:
            assert r.status == 409 and "not firing" in (await r.json())["error"]
        async with http.post(url + "/api/v1/alarms/missing/ack", headers=auth()) as r:
            assert r.status == 404
    store.flush()
    reopened = AlarmStore(store.path)
    assert reopened.get("rack-power/A01").ack_by == "alice"
    reopened.close()


async def test_shelve_round_trip(
    api: ApiFactory, http: aiohttp.ClientSession, store: AlarmStore, clock: FakeClock
) -> None:
    async with api() as url:
        shelve = url + "/api/v1/alarms/rack-power/A01/shelve"
        async with http.post(shelve, headers=auth(), json={"minutes": 30, "user": "bob"}) as r:
            assert r.status == 200
            alarm = (await r.json())["alarm"]
        assert alarm["shelved_until_ns"] == clock.now_ns() + 30 * NS_MIN and alarm["shelved_by"] == "bob"
        assert store.get("rack-power/A01").shelved_until_ns == clock.now_ns() + 30 * NS_MIN
        async with http.delete(shelve, headers=auth()) as r:
            assert r.status == 200 and (await r.json())["alarm"]["shelved_until_ns"] is None
        assert store.get("rack-power/A01").shelved_until_ns is None


@pytest.mark.parametrize(("body", "expected"), [
    ('{"minutes": 0}', "minutes"),
    ('{"minutes": 99999999}', "minutes"),
    ('{"minutes": "soon"}', "minutes"),
    ('{"minutes": 5, "until": 3}', "until"),
    ("{}", "minutes"),
    ("not json", "not JSON"),
    ("[1]", "(body)"),
])
async def test_bad_bodies_get_a_clear_400(
    api: ApiFactory, http: aiohttp.ClientSession, store: AlarmStore, body: str, expected: str
) -> None:
    async with api() as url:
        async with http.post(url + "/api/v1/alarms/rack-power/A01/shelve", headers=auth(), data=body) as r:
            assert r.status == 400
            assert expected in (await r.json())["error"]
    assert store.get("rack-power/A01").shelved_until_ns is None


async def test_maintenance_windows(
    api: ApiFactory, http: aiohttp.ClientSession, store: AlarmStore, clock: FakeClock
) -> None:
    async with api() as url:
        body = {"subject": "A01", "minutes": 90, "reason": "PDU swap"}
        async with http.post(url + "/api/v1/maintenance", json=body) as r:
            assert r.status == 401
        async with http.post(url + "/api/v1/maintenance", json=body, headers=auth()) as r:
            assert r.status == 201
            window = (await r.json())["window"]
        assert window["start_ns"] == clock.now_ns() and window["end_ns"] == clock.now_ns() + 90 * NS_MIN
        assert store.in_maintenance(["A01"], clock.now_ns()) is not None
        async with http.get(url + "/api/v1/maintenance") as r:
            assert [w["reason"] for w in (await r.json())["windows"]] == ["PDU swap"]
        async with http.post(url + "/api/v1/maintenance", json={"subject": "", "minutes": 5},
                             headers=auth()) as r:
            assert r.status == 400 and "subject" in (await r.json())["error"]


async def test_unknown_paths_and_methods(api: ApiFactory, http: aiohttp.ClientSession) -> None:
    async with api() as url:
        async with http.get(url + "/api/v1/nothing") as r:
            assert r.status == 404 and "error" in await r.json()
        async with http.put(url + "/api/v1/alarms/rack-power/A01/ack", headers=auth()) as r:
            assert r.status == 405


async def test_operator_actions_are_in_the_audit_trail(
    tmp_path: Path, http: aiohttp.ClientSession, store: AlarmStore
) -> None:
    """Acknowledge, shelve, unshelve and a maintenance window over the API each leave a chained record, as the
    console and `dcim alarms` do; a refused action leaves none."""
    api = HttpApi(HttpConfig(port=0, token=SecretStr(TOKEN)), store)
    api.audit = trail = AuditLog(tmp_path / "audit.log")
    async with serving(api) as url:
        async with http.post(url + "/api/v1/alarms/rack-power/A01/ack", headers=auth(),
                             json={"user": "alice", "comment": "on it"}) as r:
            assert r.status == 200
        async with http.post(url + "/api/v1/alarms/rack-power/A01/shelve", headers=auth(),
                             json={"minutes": 30, "user": "bob"}) as r:
            assert r.status == 200
        async with http.delete(url + "/api/v1/alarms/rack-power/A01/shelve", headers=auth()) as r:
            assert r.status == 200
        async with http.post(url + "/api/v1/maintenance", headers=auth(),
                             json={"subject": "A01", "minutes": 90, "reason": "cabling"}) as r:
            assert r.status == 201
        async with http.post(url + "/api/v1/alarms/rack-flow/A03/ack", headers=auth()) as r:
            assert r.status == 409  # not firing: nothing done, nothing recorded
    records = list(trail.records())
    assert [(r["origin"], r["point"], r["value"], r["outcome"]) for r in records] == [
        ("api:alice", "alarm_ack", "rack-power/A01", "acknowledged"),
        ("api:bob", "alarm_shelve", "rack-power/A01", "shelved"),
        ("api:unknown", "alarm_unshelve", "rack-power/A01", "unshelved"),
        ("api:unknown", "maintenance", "A01", "window opened"),
    ]
    assert records[0]["device"] == "A01" and records[0]["reason"] == "on it"
    assert trail.verify()[1] is None
