"""The documentation's samples are real: its YAML loads with dcim.app.config.parse_config and passes
`dcim schema`, the credential names it and the README use are those the shipped units load, its Mosquitto
configuration and ACL run on a real Mosquitto and do what the text says, its InfluxQL runs on a real
InfluxDB, and the exposure figures docs/deploy.md records are what systemd-analyze says of the shipped units
today."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import pytest
import yaml

from dcim.app.config import ConfigError, MqttConfig, Tls, json_schema, parse_config
from dcim.app.publisher import tls_context
from tests.helpers import require_binary
from tests.receivers import SelfSignedCert
from tests.servers import InfluxDBv1, Mosquitto, http_request

ROOT = Path(__file__).resolve().parents[2]


def blocks(doc: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "docs" / doc).read_text(), flags=re.S)


def yaml_blocks(doc: str) -> list[str]:
    return blocks(doc, "yaml")


def test_deploy_sample_loads_with_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What LoadCredential=dcim:/etc/dcim/credentials gives the service: dcim_<file> under the directory.
    for name in ("dcim_mqtt-password", "dcim_influx-password"):
        (tmp_path / name).write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (block,) = yaml_blocks("deploy.md")
    config = parse_config(yaml.safe_load(block), "docs/deploy.md")
    assert config.influxdb is not None and config.influxdb.password is not None
    assert config.influxdb.password.get_secret_value() == "s3cret"
    assert config.systemd.watchdog_interval == 5.0
    assert not Path(config.state_dir).is_absolute()  # lands in the unit's StateDirectory


def test_deploy_sample_passes_the_schema() -> None:
    (block,) = yaml_blocks("deploy.md")
    errors = [e.message for e in jsonschema.Draft202012Validator(json_schema()).iter_errors(yaml.safe_load(block))]
    assert errors == []


def test_credential_names_are_the_units() -> None:
    """`LoadCredential=ID:DIR` makes every file F of DIR the credential ID_F: every `credential:` reference in
    the README, the docs and the examples must use that name, and every file the guide writes into DIR must
    be referenced as ID_F."""
    loaded = {m.groups() for unit in sorted((ROOT / "systemd").glob("*.service"))
              for m in re.finditer(r"^LoadCredential=([^:\s]+):(\S+)$", unit.read_text(), flags=re.M)}
    assert loaded == {("dcim", "/etc/dcim/credentials")}  # dcim.service and dcim-ingest.service alike
    ((prefix, directory),) = loaded
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*.yaml"))]
    named = [(path.name, name) for path in sources
             for name in re.findall(r"credential:([A-Za-z0-9_.<>-]+)", path.read_text())]
    assert len(named) > 10
    # `credential:NAME` in prose is a placeholder, not a name.
    wrong = [(where, name) for where, name in named if not name.startswith(f"{prefix}_") and name != "NAME"]
    assert wrong == []
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    written = re.findall(rf"tee {re.escape(directory)}/([A-Za-z0-9_.-]+)", deploy)
    assert written
    for name in written:
        assert f"credential:{prefix}_{name}" in deploy, name


def test_deploy_sample_needs_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (block,) = yaml_blocks("deploy.md")
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_load(block), "docs/deploy.md")
    # Both secrets reported, each at its path, neither value echoed.
    assert {path for path, _ in caught.value.errors} == {"mqtt.password", "influxdb.password"}
    assert all("CREDENTIALS_DIRECTORY" in message for _, message in caught.value.errors)


def test_grafana_sample_loads() -> None:
    (block,) = yaml_blocks("grafana.md")
    config = parse_config(yaml.safe_load(block), "docs/grafana.md")
    assert config.influxdb is not None and config.influxdb.api == "v1"


def test_recorded_exposure_is_current(tmp_path: Path) -> None:
    require_binary("systemd-analyze", "systemd")
    recorded = dict(re.findall(r"^\| (dcim[\w-]*\.service) \| (\d+\.\d) \| OK \|$",
                               (ROOT / "docs" / "deploy.md").read_text(), flags=re.M))
    assert set(recorded) == {"dcim.service", "dcim-ingest.service", "dcim-simulate.service"}
    for name, level in recorded.items():
        copy = tmp_path / name
        text = (ROOT / "systemd" / name).read_text()
        copy.write_text(text.replace("/opt/dcim/bin/dcim", str(Path(sys.executable).parent / "dcim")))
        out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(copy)],
                             capture_output=True, text=True, timeout=60).stdout
        assert f"Overall exposure level for {name}: {level} OK" in out, out[-400:]


def post_influxql(influxdb: InfluxDBv1, statement: str) -> None:
    """A statement through /query as POST (InfluxDB refuses changes sent as GET)."""
    body = urllib.parse.urlencode({"q": statement, "db": influxdb.database}).encode()
    status, answer = http_request("POST", f"{influxdb.url}/query", body,
                                  {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and b'"error"' not in answer, (statement, answer)


def test_retention_and_downsampling_run_on_influxdb(influxdb_v1: InfluxDBv1) -> None:
    (influxql,) = blocks("deploy.md", "sql")
    statements = [line for line in influxql.splitlines() if line.strip()]
    for statement in statements:
        post_influxql(influxdb_v1, statement)
    policies = {row["name"]: row for row in influxdb_v1.query("SHOW RETENTION POLICIES")}
    assert policies["raw_30d"]["default"] is True and policies["raw_30d"]["duration"] == "720h0m0s"
    assert policies["agg_2y"]["duration"] == "17472h0m0s"
    assert [row["name"] for row in influxdb_v1.query("SHOW CONTINUOUS QUERIES")] == ["cq_1m"]

    # What the daemon writes (to the default policy, raw_30d), over one minute ...
    t0 = (int(time.time()) // 60 - 60) * 60 * 10**9  # a whole minute, an hour ago: inside raw_30d
    influxdb_v1.write([
        f"rack,site=hall-1,room=dh1,row=A,rack=A01 power_kw=100,utilization_pct=66.7 {t0}",
        f"rack,site=hall-1,room=dh1,row=A,rack=A01 power_kw=110,utilization_pct=73.3 {t0 + 30 * 10**9}",
        f"cdu,site=hall-1,room=dh1,row=A,device=cdu-1 supply_temp_c=30.5,leak=false,status=\"ok\" {t0}",
        f"alarm,site=hall-1,rack=A01,rule=x state=\"firing\",severity=\"warning\" {t0}",
    ])
    # ... and the continuous query's own SELECT over that minute, as InfluxDB runs it each minute.
    (cq,) = [s for s in statements if "CONTINUOUS QUERY" in s]
    select = cq.split(" BEGIN ", 1)[1].removesuffix(" END")
    minute = f" WHERE time >= {t0} AND time < {t0 + 60 * 10**9} GROUP BY "
    post_influxql(influxdb_v1, select.replace(" GROUP BY ", minute))
    (rack,) = influxdb_v1.query('SELECT * FROM "dcim"."agg_2y"."rack"')
    assert (rack["rack"], rack["mean_power_kw"], rack["max_power_kw"]) == ("A01", 105, 110)
    (cdu,) = influxdb_v1.query('SELECT * FROM "dcim"."agg_2y"."cdu"')
    assert cdu["device"] == "cdu-1" and cdu["mean_supply_temp_c"] == 30.5
    assert influxdb_v1.query('SELECT * FROM "dcim"."agg_2y"."alarm"') == []  # events are not averaged


class DocumentedBroker(Mosquitto):
    """Mosquitto on deploy.md's configuration and ACL, moved to held ports and a temporary directory; the
    test adds one user of its own (`test-admin`, reads everything) to see what the ACL lets through."""

    def __init__(self, workdir: Path, *, conf: str, acl: str, cert: SelfSignedCert, passwords: dict[str, str],
                 **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.conf, self.acl, self.cert, self.passwords = conf, acl, cert, passwords
        self.tls_port = 0

    def _allocate_ports(self) -> None:
        self.port = self._hold()       # the loopback listener (plain)
        self.tls_port = self._hold()   # the TLS listener

    def ports(self) -> list[int]:
        return [self.port, self.tls_port]

    def _prepare(self) -> None:
        d = self.workdir
        text = self.conf
        for path, here in (
            ("listener 8883", f"listener {self.tls_port} 127.0.0.1"),
            ("listener 1883 127.0.0.1", f"listener {self.port} 127.0.0.1"),
            ("/etc/mosquitto/dcim.passwd", str(d / "dcim.passwd")),
            ("/etc/mosquitto/dcim.acl", str(d / "dcim.acl")),
            ("/etc/mosquitto/tls/server.crt", str(self.cert.certfile)),
            ("/etc/mosquitto/tls/server.key", str(self.cert.keyfile)),
            ("/var/lib/mosquitto/", f"{d}/"),
        ):
            assert path in text, path
            text = text.replace(path, here)
        extra = ["log_dest stdout", "log_type all", *(["user root"] if os_is_root() else [])]
        self.config_path.write_text(text + "\n" + "\n".join(extra) + "\n")
        (d / "dcim.acl").write_text(self.acl + "\nuser test-admin\ntopic read #\n")
        passwd = d / "dcim.passwd"
        passwd.unlink(missing_ok=True)
        for user, password in self.passwords.items():
            create = [] if passwd.exists() else ["-c"]
            subprocess.run(["mosquitto_passwd", *create, "-b", str(passwd), user, password], check=True,
                           capture_output=True, timeout=30)


def os_is_root() -> bool:
    return os.geteuid() == 0


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(30):  # a bound for a failing broker, not a wait for the passing case
        return await anext(client.messages)


def granted(codes: Any) -> bool:
    return all(int(getattr(code, "value", code)) < 0x80 for code in codes)


async def test_broker_setup_runs_and_confines_dcim_to_its_prefix(
    server_factory: Callable[..., Any], tmp_path: Path
) -> None:
    require_binary("mosquitto_passwd", "mosquitto")
    conf, acl = blocks("deploy.md", "conf")
    passwords = {"dcim": "pw-dcim", "dcim-ingest": "pw-ingest", "dcim-viewer": "pw-viewer", "test-admin": "pw-admin"}
    cert = SelfSignedCert.create(tmp_path)
    broker: DocumentedBroker = server_factory(DocumentedBroker, conf=conf, acl=acl, cert=cert, passwords=passwords)
    v5 = aiomqtt.ProtocolVersion.V5

    def client(user: str | None, *, password: str | None = None, tls: bool = False, **kwargs: Any) -> aiomqtt.Client:
        port = broker.tls_port if tls else broker.port
        # TLS as the daemon sets it up from `mqtt.tls.ca_file` (dcim.app.publisher).
        context = tls_context(MqttConfig(tls=Tls(ca_file=str(cert.certfile)))) if tls else None
        return aiomqtt.Client("127.0.0.1", port, username=user, password=password or passwords.get(user or ""),
                              protocol=v5, tls_context=context, timeout=10, **kwargs)

    for user, password in ((None, None), ("dcim", "wrong")):  # allow_anonymous false; the password file
        with pytest.raises(aiomqtt.MqttError):
            async with client(user, password=password):
                pass

    async with client("test-admin") as admin, client("dcim-ingest", identifier="ingest-1") as ingest, \
            client("dcim-viewer") as viewer, client("dcim", tls=True) as daemon:
        assert granted(await admin.subscribe("#", qos=1))
        # The ingest's shared subscription passes the `dcim/#` read rule.
        assert granted(await ingest.subscribe("$share/dcim-ingest/dcim/+/+/+", qos=1))
        assert granted(await viewer.subscribe("dcim/#", qos=1))

        # Outside the prefix the daemon's user may not publish: had the first message passed, the admin
        # would get it before the second, which the same connection sends after it.
        with contextlib.suppress(aiomqtt.MqttCodeError):
            await daemon.publish("other/hall-1/cdu/cdu-1", b"outside", qos=1)
        await daemon.publish("dcim/hall-1/cdu/cdu-1", b"inside", qos=1)
        first = await next_message(admin)
        assert (str(first.topic), first.payload) == ("dcim/hall-1/cdu/cdu-1", b"inside")
        delivered = await next_message(ingest)
        assert (str(delivered.topic), delivered.payload) == ("dcim/hall-1/cdu/cdu-1", b"inside")
        assert (await next_message(viewer)).payload == b"inside"

        # The viewer only reads, even under the prefix.
        with contextlib.suppress(aiomqtt.MqttCodeError):
            await viewer.publish("dcim/hall-1/cdu/cdu-1", b"from-viewer", qos=1)
        await daemon.publish("dcim/hall-1/status/cdu-1", b'{"online": true}', qos=1, retain=True)
        after = await next_message(admin)
        assert (str(after.topic), after.payload) == ("dcim/hall-1/status/cdu-1", b'{"online": true}')

    # persistence: a retained status survives a broker restart.
    await asyncio.to_thread(broker.restart)
    async with client("dcim-viewer") as viewer:
        await viewer.subscribe("dcim/+/status/#", qos=1)
        kept = await next_message(viewer)
        assert kept.retain and kept.payload == b'{"online": true}'


def test_backup_script_copies_a_live_state_directory(tmp_path: Path) -> None:
    """The guide's backup script, run on a state directory whose SQLite files are open in WAL mode with
    committed rows not yet checkpointed into the main file (what `cp` of the .db alone would miss)."""
    require_binary("sqlite3", "sqlite3")
    (script,) = [b for b in blocks("deploy.md", "sh") if b.startswith("#!/bin/sh")]
    src, dst = tmp_path / "state", tmp_path / "backup"
    (src / "notify").mkdir(parents=True)
    script = script.replace("src=/var/lib/private/dcim/state", f"src={src}")
    script = script.replace("dst=/var/backups/dcim/$(", f"dst={dst}/$(")
    assert str(src) in script and str(dst) in script
    (src / "audit.log").write_text('{"seq": 1}\n')
    (src / "leases.json").write_text("{}")
    (src / "dcim.lock").write_text("")
    writers = []
    for name in ("alarms.db", "journal.sqlite", "notify/hook-oncall.sqlite"):
        db = sqlite3.connect(src / name)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint=0")  # the rows stay in the -wal file, as between checkpoints
        db.execute("CREATE TABLE t (v TEXT)")
        db.execute("INSERT INTO t VALUES (?)", (name,))
        db.commit()
        writers.append(db)  # held open: the daemon is running
    try:
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    finally:
        for db in writers:
            db.close()
    (copy,) = dst.iterdir()
    for name in ("alarms.db", "journal.sqlite", "notify/hook-oncall.sqlite"):
        backup = sqlite3.connect(copy / name)
        assert backup.execute("SELECT v FROM t").fetchall() == [(name,)]
        backup.close()
    assert (copy / "audit.log").read_text() == '{"seq": 1}\n'
    assert (copy / "leases.json").exists() and not (copy / "dcim.lock").exists()
