"""The test servers and receivers themselves: each starts, answers, stops and comes back on the same port."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import _require
from tests.helpers import wait_until, wait_until_sync
from tests.receivers import HttpReceiver, MqttRecorder, SmtpReceiver
from tests.servers import InfluxDBv1, Mosquitto, ServerError, VictoriaMetrics, listening_pids, port_accepts

pytest_plugins = ["pytester"]

TS_NS = 1_700_000_000_123_456_789  # Nov 2023: old on purpose, retention must keep it


def _mqtt(broker: Mosquitto, name: str, v5: bool = True) -> aiomqtt.Client:
    protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    return aiomqtt.Client(broker.host, broker.port, identifier=name, protocol=protocol, timeout=5)


async def _round_trip(broker: Mosquitto, topic: str, v5: bool = True) -> bytes:
    async with _mqtt(broker, "sub", v5) as sub, _mqtt(broker, "pub", v5) as pub:
        await sub.subscribe(topic, qos=1)
        await pub.publish(topic, b"hello", qos=1)
        async with asyncio.timeout(5):
            async for message in sub.messages:
                return bytes(message.payload)
    raise AssertionError("subscriber stopped without a message")


# Mosquitto


async def test_mosquitto_answers_mqtt_311_and_5(mosquitto: Mosquitto) -> None:
    assert await _round_trip(mosquitto, "dcim/a/cdu/cdu-1", v5=False) == b"hello"
    assert await _round_trip(mosquitto, "dcim/a/cdu/cdu-1", v5=True) == b"hello"


async def test_mosquitto_stops_and_restarts_on_the_same_port(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    await mosquitto.astop()
    assert not mosquitto.running
    assert not port_accepts(mosquitto.host, port)
    with pytest.raises(aiomqtt.MqttError):
        async with _mqtt(mosquitto, "refused"):
            pass
    await mosquitto.astart()
    assert mosquitto.port == port
    assert await _round_trip(mosquitto, "t") == b"hello"
    mosquitto.restart()  # the blocking variant, for sync tests
    assert mosquitto.port == port
    assert await _round_trip(mosquitto, "t") == b"hello"


async def test_mqtt5_shared_subscription_splits_messages_between_workers(mosquitto: Mosquitto) -> None:
    received: dict[str, list[bytes]] = {"w1": [], "w2": []}

    async def worker(client: aiomqtt.Client, name: str) -> None:
        async for message in client.messages:
            received[name].append(bytes(message.payload))

    async with (
        _mqtt(mosquitto, "w1") as w1,
        _mqtt(mosquitto, "w2") as w2,
        _mqtt(mosquitto, "publisher") as pub,
    ):
        await w1.subscribe("$share/ingest/dcim/#", qos=1)
        await w2.subscribe("$share/ingest/dcim/#", qos=1)
        tasks = [asyncio.create_task(worker(w1, "w1")), asyncio.create_task(worker(w2, "w2"))]
        sent = [f"m{i}".encode() for i in range(20)]
        for payload in sent:
            await pub.publish("dcim/site/cdu/cdu-1", payload, qos=1)
        await wait_until(lambda: len(received["w1"]) + len(received["w2"]) >= len(sent), timeout=10)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(received["w1"] + received["w2"]) == sorted(sent)  # each message exactly once
    assert received["w1"] and received["w2"]  # and both workers took a share


async def test_mosquitto_pause_holds_clients_until_resume(mosquitto: Mosquitto) -> None:
    mosquitto.pause()
    try:
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="hung", timeout=0.5):
                pass
    finally:
        mosquitto.resume()
    assert await _round_trip(mosquitto, "after/resume") == b"hello"


async def test_mosquitto_persistence_keeps_queued_messages_across_restart(server_factory: Any) -> None:
    broker: Mosquitto = server_factory(Mosquitto, persistence=True)
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="ingest", clean_session=False, protocol=aiomqtt.ProtocolVersion.V311
    ) as sub:
        await sub.subscribe("dcim/#", qos=1)
    async with _mqtt(broker, "pub") as pub:
        await pub.publish("dcim/x", b"queued", qos=1)
    await broker.arestart()
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="ingest", clean_session=False, protocol=aiomqtt.ProtocolVersion.V311
    ) as sub:
        async with asyncio.timeout(5):
            async for message in sub.messages:
                assert message.payload == b"queued"
                break


async def test_mqtt_recorder_records_and_follows_the_broker_across_a_restart(mosquitto: Mosquitto) -> None:
    async with _mqtt(mosquitto, "pub") as pub:
        await pub.publish("dcim/hall-1/status/cdu-1", b'{"online": true}', qos=1, retain=True)
    async with MqttRecorder(mosquitto.host, mosquitto.port, "dcim/#") as rec:
        [status] = await rec.wait_for(1, where=lambda m: m.matches("dcim/+/status/+"))
        assert status.retain and status.json() == {"online": True}
        async with _mqtt(mosquitto, "pub") as pub:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [("source", "test")]
            await pub.publish("dcim/hall-1/cdu/cdu-1", b"cdu,device=cdu-1 flow_lpm=1 1\n", qos=1, properties=props)
        [line] = await rec.wait_for(1, where=lambda m: m.matches("dcim/+/cdu/#"))
        assert line.lines() == ["cdu,device=cdu-1 flow_lpm=1 1"] and not line.retain and line.qos == 1
        assert line.user_properties == {"source": "test"}

        await mosquitto.arestart()
        await wait_until(lambda: rec.disconnects == 1, timeout=10)
        await rec.connected()
        async with _mqtt(mosquitto, "pub") as pub:
            await pub.publish("dcim/after", b"back", qos=1)
        await rec.wait_for(1, where=lambda m: m.topic == "dcim/after")


async def test_mqtt_recorder_says_when_there_is_no_broker(free_port: int) -> None:
    with pytest.raises(TimeoutError, match="not connected"):
        async with MqttRecorder("127.0.0.1", free_port, "#", connect_timeout=0.3):
            pass
    with pytest.raises(ValueError, match="topic"):
        MqttRecorder("127.0.0.1", free_port)


def test_a_server_that_cannot_start_raises_with_its_log(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, extra_config=["no_such_option true"])
    with pytest.raises(ServerError) as info:
        broker.start()
    assert "no_such_option" in str(info.value)  # the log tail names the culprit
    assert not broker.running
    broker.close()
    broker.stop()  # idempotent


# InfluxDB 1.x


async def test_influxdb_v1_write_then_query_survives_restart(influxdb_v1: InfluxDBv1) -> None:
    lines = (
        f"cdu,site=hall1,device=cdu-1 flow_lpm=412.5,leak=false,pump_speed_pct=80i {TS_NS}\n"
        f"cdu,site=hall1,device=cdu-2 flow_lpm=398.25,leak=true,pump_speed_pct=75i {TS_NS}\n"
    )
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{influxdb_v1.url}/write", params={"db": "dcim"}, data=lines)
        assert resp.status == 204, await resp.text()
        bad = await http.post(f"{influxdb_v1.url}/write", params={"db": "dcim"}, data="not line protocol")
        assert bad.status == 400
    rows = await influxdb_v1.aquery("SELECT * FROM cdu ORDER BY time")
    by_device = {r["device"]: r for r in rows}
    assert by_device["cdu-1"] == {
        "_measurement": "cdu", "time": TS_NS, "site": "hall1", "device": "cdu-1",
        "flow_lpm": 412.5, "leak": False, "pump_speed_pct": 80,
    }
    assert by_device["cdu-2"]["leak"] is True
    grouped = influxdb_v1.query("SELECT last(flow_lpm) FROM cdu GROUP BY device")
    assert {r["device"]: r["last"] for r in grouped} == {"cdu-1": 412.5, "cdu-2": 398.25}

    port = influxdb_v1.port
    await influxdb_v1.arestart()
    assert influxdb_v1.port == port
    assert len(influxdb_v1.query("SELECT * FROM cdu")) == 2


def test_influxdb_v1_reports_query_errors(influxdb_v1: InfluxDBv1) -> None:
    with pytest.raises(ServerError, match="error parsing query"):
        influxdb_v1.query("SELEC flow_lpm FROM cdu")
    with pytest.raises(ServerError, match="database not found"):
        influxdb_v1.query("SELECT * FROM cdu", db="nope")
    influxdb_v1.create_database("other")
    influxdb_v1.write("rack,rack=r1 power_kw=120.5 1", db="other")
    assert influxdb_v1.query("SELECT power_kw FROM rack", db="other") == [
        {"_measurement": "rack", "time": 1, "power_kw": 120.5}
    ]


# VictoriaMetrics


async def test_victoria_metrics_stores_what_influxdb_client_v2_writes(victoria_metrics: VictoriaMetrics) -> None:
    point = {  # the client turns this into line protocol, as it does Point objects
        "measurement": "cdu",
        "tags": {"site": "hall1", "device": "cdu-1"},
        "fields": {"flow_lpm": 412.5, "leak": True, "pump_speed_pct": 80},
        "time": TS_NS,
    }
    async with InfluxDBClientAsync(url=victoria_metrics.url, token="unused", org="dcim") as client:
        assert await client.write_api().write(bucket="dcim", record=[point])

    series = await victoria_metrics.aexport('{__name__=~"cdu_.*"}')
    stored = {s["metric"]["__name__"]: s for s in series}
    assert set(stored) == {"cdu_flow_lpm", "cdu_leak", "cdu_pump_speed_pct"}
    for s in stored.values():
        assert s["metric"]["site"] == "hall1" and s["metric"]["device"] == "cdu-1"
        assert s["timestamps"] == [TS_NS // 1_000_000]  # milliseconds
    assert stored["cdu_flow_lpm"]["values"] == [412.5]
    assert stored["cdu_leak"]["values"] == [1]  # booleans become 0/1
    instant = victoria_metrics.query('cdu_flow_lpm{device="cdu-1"}', time_s=TS_NS / 1e9)
    assert [r["value"][1] for r in instant] == ["412.5"]

    port = victoria_metrics.port
    await victoria_metrics.arestart()
    assert victoria_metrics.port == port
    assert "cdu_flow_lpm" in victoria_metrics.metric_names()


# Receivers


async def test_http_receiver_records_and_answers_as_told(http_receiver: HttpReceiver) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{http_receiver.url}/hooks/alarm?source=dcim", json={"rule": "rack_power"},
            headers={"Authorization": "Bearer t"},
        )
        assert resp.status == 200
        [req] = await http_receiver.wait_for(count=1, timeout=5)
        assert (req.method, req.path, req.query) == ("POST", "/hooks/alarm", {"source": "dcim"})
        assert req.headers["authorization"] == "Bearer t"
        assert req.json() == {"rule": "rack_power"}

        http_receiver.fail_next(2, status=503)
        statuses = [(await http.get(f"{http_receiver.url}/x")).status for _ in range(3)]
        assert statuses == [503, 503, 200]
        http_receiver.respond(500, "down")
        resp = await http.put(f"{http_receiver.url}/y", data=b"raw")
        assert (resp.status, await resp.text()) == (500, "down")
        assert len(await http_receiver.wait_for(count=5, timeout=5)) == 5
        [put] = await http_receiver.wait_for(1, where=lambda r: r.method == "PUT")
        assert (put.path, put.body) == ("/y", b"raw")

    port = http_receiver.port
    http_receiver.stop()
    assert not port_accepts(http_receiver.host, port)
    http_receiver.start()
    assert http_receiver.port == port
    with pytest.raises(TimeoutError, match="expected 6"):
        await http_receiver.wait_for(count=6, timeout=0.05)


def test_http_receiver_over_tls_from_a_sync_test() -> None:
    with HttpReceiver(tls=True) as receiver:
        assert receiver.url.startswith("https://") and receiver.cafile
        ctx = ssl.create_default_context(cafile=receiver.cafile)
        import urllib.request

        req = urllib.request.Request(f"{receiver.url}/t", data=b"{}", method="POST")
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            assert resp.status == 200
        [got] = receiver.wait_for_sync(count=1, timeout=5)
        assert got.path == "/t"


def _mail(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "dcim@example.org", "oncall@example.org", subject
    msg.set_content("rack r1 over budget")
    return msg


async def test_smtp_receiver_records_messages(smtp_receiver: SmtpReceiver) -> None:
    def send() -> None:
        with smtplib.SMTP(smtp_receiver.host, smtp_receiver.port, timeout=5) as client:
            client.send_message(_mail("ALARM rack_power r1"))

    await asyncio.to_thread(send)
    [msg] = await smtp_receiver.wait_for(count=1, timeout=5)
    assert (msg.mail_from, msg.rcpt_tos) == ("dcim@example.org", ["oncall@example.org"])
    assert msg.subject == "ALARM rack_power r1"
    assert msg.text().strip() == "rack r1 over budget"
    assert not msg.tls and msg.login is None

    smtp_receiver.respond("451 try again later")
    with pytest.raises(smtplib.SMTPDataError):
        await asyncio.to_thread(send)
    assert len(smtp_receiver.messages) == 1


def test_smtp_receiver_requires_starttls_then_auth(smtp_receiver_tls: SmtpReceiver) -> None:
    rx = smtp_receiver_tls
    assert rx.username and rx.password and rx.cafile
    with smtplib.SMTP(rx.host, rx.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPSenderRefused):  # 530: STARTTLS first
            client.send_message(_mail("refused"))
    with smtplib.SMTP(rx.host, rx.port, timeout=5) as client:
        client.starttls(context=ssl.create_default_context(cafile=rx.cafile))
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(rx.username, "wrong")
        client.login(rx.username, rx.password)
        client.send_message(_mail("over TLS"))
    [msg] = rx.wait_for_sync(count=1, timeout=5)
    assert msg.tls and msg.login == rx.username and msg.subject == "over TLS"
    assert rx.auth_failures >= 1  # smtplib tries each mechanism it shares with the server


def test_smtp_receiver_implicit_tls() -> None:
    with SmtpReceiver(implicit_tls=True, username="u", password="p") as rx:
        assert rx.cafile
        ctx = ssl.create_default_context(cafile=rx.cafile)
        with smtplib.SMTP_SSL(rx.host, rx.port, context=ctx, timeout=5) as client:
            client.login("u", "p")
            client.send_message(_mail("smtps"))
        [msg] = rx.wait_for_sync(count=1, timeout=5)
        assert msg.tls and msg.login == "u"


def test_receivers_close_connections_clients_left_open() -> None:
    for receiver in (SmtpReceiver(), HttpReceiver()):
        receiver.start()
        with socket.create_connection((receiver.host, receiver.port), timeout=5) as client:
            if isinstance(receiver, HttpReceiver):
                client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive
            assert client.recv(1)
            receiver.close()
            while client.recv(4096):  # the rest of the answer, then EOF; a timeout fails the test
                pass


def test_receivers_reject_contradictory_options() -> None:
    with pytest.raises(ValueError, match="not both"):
        SmtpReceiver(starttls=True, implicit_tls=True)
    with pytest.raises(ValueError, match="together"):
        SmtpReceiver(username="u")


# Helpers and fixtures


async def test_wait_until_returns_the_value_or_says_what_it_last_saw() -> None:
    calls = iter(range(100))

    async def third() -> int:
        return max(0, next(calls) - 2)

    assert await wait_until(third, timeout=5, interval=0) == 1
    with pytest.raises(AssertionError, match="never; last result \\[\\]"):
        await wait_until(list, timeout=0.05, message="never")
    with pytest.raises(AssertionError, match="last error ConnectionRefusedError"):
        await wait_until(lambda: socket.create_connection(("127.0.0.1", 1)), timeout=0.05, ignore=(OSError,))
    assert wait_until_sync(lambda: "ok", timeout=1) == "ok"


class _Missing(Mosquitto):
    binary_name = "no-such-server-binary"
    package = "no-such-package"


def test_a_missing_binary_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install no-such-package"):
        _require(_Missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run every test"):
        _require(_Missing)
    with pytest.raises(ServerError, match="not found"):
        _Missing()


def test_free_port_is_held_for_a_server_that_binds_it(free_port: int) -> None:
    # Held: a plain bind (what anyone else would try) fails, and no bind(0) hands it out...
    with socket.socket() as other, pytest.raises(OSError, match="in use"):
        other.bind(("127.0.0.1", free_port))
    for _ in range(200):
        with socket.socket() as anyone:
            anyone.bind(("127.0.0.1", 0))
            assert anyone.getsockname()[1] != free_port
    # ... while a server binding it with SO_REUSEADDR (asyncio, aiohttp, pymodbus, mosquitto, Go) listens.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", free_port))
        server.listen()
        with socket.create_connection(("127.0.0.1", free_port), timeout=10):
            pass


LEAK_TESTS = '''
import asyncio
import pytest
import pytest_asyncio


async def test_leaks_a_task():
    asyncio.create_task(asyncio.sleep(3600), name="forgotten")


async def test_cleans_up():
    task = asyncio.create_task(asyncio.sleep(3600))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest_asyncio.fixture
async def service():
    tasks = [asyncio.create_task(asyncio.sleep(3600))]
    yield tasks
    for t in tasks:
        t.cancel()


async def test_fixture_owned_tasks_are_not_leaks(service):
    service.append(asyncio.create_task(asyncio.sleep(3600)))


@pytest.mark.allow_task_leaks
async def test_marked_may_leak():
    asyncio.create_task(asyncio.sleep(3600))


def test_sync_tests_are_left_alone():
    pass


async def test_fails_and_leaks():
    asyncio.create_task(asyncio.sleep(3600), name="after-failure")
    raise AssertionError("the real failure")
'''


MODULE_LOOP_TESTS = '''
import asyncio
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_first_leaks():
    asyncio.create_task(asyncio.sleep(3600), name="module-leak")


async def test_second_is_judged_on_its_own():
    await asyncio.sleep(0)
'''


def test_leaked_tasks_fail_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("from tests.conftest import _fail_on_leaked_tasks, pytest_configure, "
                          "pytest_runtest_makereport  # noqa: F401")
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_leaks=LEAK_TESTS, test_module_loop=MODULE_LOOP_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    # A leaking test passes its call, then errors at teardown; one that failed is not reported twice.
    result.assert_outcomes(passed=7, errors=2, failed=1)
    assert "ERROR at teardown of test_fails_and_leaks" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_first_leaks*", "*module-leak*"])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaks_a_task*", "*forgotten*"])


@pytest.mark.parametrize("cls", [Mosquitto, VictoriaMetrics])
def test_a_port_taken_before_the_server_binds_it_is_a_conflict_and_another_is_used(
        tmp_path: Path, cls: type[Mosquitto] | type[VictoriaMetrics]) -> None:
    """The race the harness must not lose: the chosen port is taken between choosing and binding. Someone
    else's listener answers connections, so only the kernel's socket table tells whose it is."""
    _require(cls)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        class Unlucky(cls):  # type: ignore[valid-type,misc]
            candidates = [port]

            def _allocate_ports(self) -> None:
                super()._allocate_ports()
                if self.candidates:
                    self.port = self.candidates.pop()

        with Unlucky(tmp_path / "server") as server:
            assert server.port != port
            assert server.owns_ports()
            assert listening_pids(server.port, [server.pid]) == {server.pid}
            # The first start on the taken port failed (an exit, or a conflict seen): one retry on another.
            assert server.log_path.read_text().count("--- start") == 2
