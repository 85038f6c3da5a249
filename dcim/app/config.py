"""The configuration: pydantic models loaded from YAML, every error reported with its path.

    site: {id: hall-1, name: "AI hall 1"}
    rooms: [{id: r1, rows: [{id: A, racks: [{id: A01, cooling: liquid, power_budget_kw: 150, ...}]}]}]
    devices: [{id: cdu-1, kind: cdu, protocol: modbus, host: 127.0.0.1, port: 5020, profile: generic-cdu}]
    mqtt: {host: 127.0.0.1, port: 1883, prefix: dcim}
    influxdb: {url: http://127.0.0.1:8086, api: v1, database: dcim}

`load_config(path)` returns a `Config` or raises `ConfigError` holding every (path, message) found: first
the schema (types, ranges, unknown keys), then cross-references (a rack's CDU or PDU that is not a device,
duplicate ids, unknown profiles).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, create_model, model_validator

from dcim.app.cluster_config import ClusterConfig
from dcim.core import collector
from dcim.core.config import DocumentedSchema, Duration, PositiveDuration, StrictModel, error_path
from dcim.core.secrets import Secret
from dcim.core.topology import Rack, Room, Row, Site
from dcim.drivers.base import DeviceBase
from dcim.drivers.profiles import ProfileError, available_profiles, load_profile
from dcim.drivers.registry import PROTOCOLS
from dcim.rules.config import RulesConfig, check_references

# A configured device: an instance of its protocol's device model (drivers.registry), tagged by `protocol`.
Device = DeviceBase


class Tls(StrictModel):
    """TLS to the MQTT broker (port 8883 by convention). Omit the section for a plain connection."""

    ca_file: str | None = Field(default=None, examples=["/etc/dcim/tls/ca.pem"])
    """PEM bundle of the CA(s) that signed the broker's certificate; the system's trust store when not set."""
    cert_file: str | None = Field(default=None, examples=["/etc/dcim/tls/dcim.crt"])
    """Client certificate (PEM), for a broker that authenticates clients by certificate."""
    key_file: str | None = Field(default=None, examples=["/etc/dcim/tls/dcim.key"])
    """Private key of `cert_file` (PEM, unencrypted; keep the file readable by the service only)."""
    insecure: bool = False
    """Skip the check of the broker's certificate and host name. Lab use only: anyone on the path can
    impersonate the broker."""


class MqttConfig(StrictModel):
    """The MQTT broker every reading, status and alarm is published to."""

    host: str | None = Field(default=None, examples=["mqtt.facility.example", "10.20.0.5"])
    """Broker host name or address. Not set: `dcim demo` starts an embedded broker; `dcim run` publishes
    nothing and says so at start."""
    port: Annotated[int, Field(ge=1, le=65535, examples=[1883, 8883])] = 1883
    """Broker TCP port: 1883 plain, 8883 with `tls`."""
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", examples=["dcim", "site1/dcim"])] = \
        "dcim"
    """First level(s) of every topic: `{prefix}/{site}/{kind}/{device}`. Give the broker's ACL this prefix."""
    client_id: str | None = None
    """MQTT client id; default: dcim-publisher-<host name> (and dcim-ingest-... for the ingest)."""
    username: str | None = Field(default=None, examples=["dcim"])
    """User name for the broker's authentication."""
    password: Secret | None = None
    """Password for `username`, as a reference (env:NAME, file:PATH or credential:NAME), never inline."""
    tls: Tls | None = None
    """TLS settings; not set: a plain TCP connection."""
    payload: Literal["line", "json"] = "line"
    """Payload format: InfluxDB line protocol (readable by Telegraf's mqtt_consumer too) or JSON."""
    protocol: Literal["5", "3.1.1"] = "5"
    """MQTT protocol version (quoted in YAML: "5"). The ingest's shared subscriptions need 5; 3.1.1 is for
    brokers that lack it."""
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    """Seconds between MQTT pings when idle; the broker drops the session after 1.5 times this in silence."""
    outbox_max_messages: Annotated[int, Field(ge=100)] = 200_000
    """Bound of the durable outbox (on disk, in state_dir) that holds messages while the broker is away;
    alarms go out before telemetry, and past the bound the oldest telemetry is dropped first, and counted."""
    reconnect_max: PositiveDuration = 5.0
    """Longest wait between two connection attempts (seconds or e.g. "5s"): also how late delivery may resume
    after the broker returns."""
    max_inflight: Annotated[int, Field(ge=1, le=65535)] = 1000
    """QoS 1 messages the publisher keeps on the wire unacknowledged. With MQTT 5 the broker's Receive
    Maximum lowers it (mosquitto announces its `max_inflight_messages`, 20 unless set; docs/deploy.md sets
    1000): more would let a strict broker disconnect the publisher. The publisher tops its window up once per
    pass of the daemon's event loop, so on a busy daemon the window is a ceiling on its pace (100 held 4,200
    CDUs at about 9,000 messages/s). On a link with a long round trip, raise both."""


class InfluxConfig(StrictModel):
    """Where the ingest stores readings. Not set: nothing is written to a database by this process."""

    url: Annotated[str, Field(pattern=r"^https?://", examples=["http://influxdb.facility.example:8086"])] = \
        "http://127.0.0.1:8086"
    """Base URL of InfluxDB (or VictoriaMetrics), without a path."""
    api: Literal["v2", "v1"] = "v2"
    """Write API: v2 (/api/v2/write: InfluxDB 1.8+, 2.x, 3.x, VictoriaMetrics) or v1 (/write: InfluxDB before
    1.8). v2 uses `org`, `bucket`, `token`; v1 uses `database`, `retention_policy`, `username`, `password`."""
    org: str = "dcim"
    """InfluxDB 2.x organisation (api v2)."""
    bucket: str = "dcim"
    """InfluxDB 2.x bucket, or "database/retention-policy" for InfluxDB 1.8+ through the v2 API (api v2)."""
    token: Secret | None = None
    """API token (api v2), as a reference. InfluxDB 1.8 takes "username:password" as its token."""
    database: str = "dcim"
    """Database name (api v1)."""
    retention_policy: str | None = Field(default=None, examples=["raw_30d"])
    """Retention policy written to (api v1); the database's default policy when not set."""
    username: str | None = Field(default=None, examples=["dcim"])
    """User name (api v1)."""
    password: Secret | None = None
    """Password of `username` (api v1), as a reference."""
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5000
    """Lines per write request, at most."""
    flush_interval: PositiveDuration = 1.0
    """A batch that is not full is written after this long (seconds or e.g. "1s")."""
    timeout: PositiveDuration = 10.0
    """Timeout of one write request; a timed-out batch stays in the outbox and is retried."""
    outbox_max_lines: Annotated[int, Field(ge=1000)] = 2_000_000
    """Bound of the durable outbox (in state_dir) holding lines while the database is away; past it the
    oldest are dropped and counted."""


class IngestConfig(StrictModel):
    """The MQTT -> InfluxDB ingest (docs/ingest.md)."""

    enabled: bool = True
    """Run the ingest inside `dcim run` when `influxdb` is set; false when separate hosts run `dcim ingest`."""
    source: Literal["local", "broker"] = "local"
    """Inside a daemon that polls: local stores the daemon's own readings in-process (the payload published on
    MQTT, encoded once; no round trip through the broker, stored even while the broker is away); broker
    subscribes to the broker instead, like `dcim ingest`, and then also stores what other daemons publish
    there. `dcim ingest` always takes from the broker."""
    group: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] = "dcim-ingest"
    """MQTT 5 shared-subscription group: ingest workers in one group split the messages between them."""
    client_id: str | None = None
    """MQTT client id of this worker, stable across restarts (the broker keeps its session while it is away).
    Default: dcim-ingest-<hostname>-<hash of state_dir>-<group>, distinct per instance."""
    max_message_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    """A larger MQTT message is dropped whole (and counted)."""
    max_line_bytes: Annotated[int, Field(ge=256)] = 64 * 1024
    """A longer line of line protocol is dropped (and counted); the rest of its message is kept."""
    max_clock_ahead: PositiveDuration = 86_400.0
    """A line stamped later than now plus this comes from a clock gone wrong and is dropped."""
    dead_letter: bool = False
    """Keep dropped messages and bad lines in state_dir/ingest-dead-letters.jsonl for inspection."""
    dead_letter_max_bytes: Annotated[int, Field(ge=4096)] = 16 * 1024 * 1024
    """Size at which the dead-letter file is rotated to .jsonl.1 (one older file kept)."""
    max_bisect_requests: Annotated[int, Field(ge=0, le=64)] = 16
    """Extra write requests per batch spent finding the lines a database refuses along with the whole batch."""
    workers: Annotated[int, Field(ge=0, le=64)] = 0
    """Ingest worker processes `dcim run` starts beside itself, each taking from the broker in the shared
    subscription `group` (so they use other cores, and the broker splits the messages between the workers of
    every node); they replace the in-process ingest. 0: none (the in-process ingest, if enabled). Needs
    mqtt.host and influxdb."""


class LoggingConfig(StrictModel):
    """The daemon's log on stderr (the journal under systemd)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged."""
    format: Literal["auto", "json", "console"] = "auto"
    """json: one JSON object per line (for log shippers); console: for a terminal; auto: console on a
    terminal, json otherwise."""


class HttpConfig(StrictModel):
    """The HTTP API (docs/http-api.md)."""

    enabled: bool = True
    """Serve the HTTP API."""
    host: str = Field(default="127.0.0.1", examples=["127.0.0.1", "0.0.0.0"])
    """Address to listen on; the loopback address by default, so only this host can reach it. Any other
    address (0.0.0.0: every interface) needs tls_cert_file, tls_key_file and token."""
    port: Annotated[int, Field(ge=0, le=65535, examples=[8470])] = 8470
    """TCP port to listen on (0: any free port, logged at start)."""
    token: Secret | None = None
    """Bearer token that state-changing calls (acknowledge, shelve, maintenance, writes) must present, as a
    reference. Not set: those calls are refused. Also the web console's login password."""
    # Bound to anything but a loopback address, the API and the console need HTTPS and a login (http.token):
    # checked here, so the daemon never starts exposed.
    console: bool = True
    """Serve the web console (/, /racks, /devices, /alarms, /events) on this same server (docs/console.md)."""
    tls_cert_file: str | None = Field(default=None, examples=["/etc/dcim/tls/dcim.crt"])
    """PEM certificate (chain) file: serve HTTPS. Required, with tls_key_file and token, when host is not a
    loopback address."""
    tls_key_file: str | None = Field(default=None, examples=["/etc/dcim/tls/dcim.key"])
    """PEM private key file of tls_cert_file."""
    session_ttl: PositiveDuration = Field(default=8 * 3600.0, examples=["8h"])
    """How long a console login lasts."""

    @model_validator(mode="after")
    def _exposed_needs_tls_and_login(self) -> HttpConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("http.tls_cert_file and http.tls_key_file go together: set both or neither")
        if self.enabled and not is_loopback(self.host):
            missing = [name for name, value in (("tls_cert_file", self.tls_cert_file),
                                                ("tls_key_file", self.tls_key_file), ("token", self.token))
                       if value is None]
            if missing:
                raise ValueError(
                    f"http.host {self.host!r} is not a loopback address: serving the API and console there needs "
                    f"HTTPS and a login; set http.{', http.'.join(missing)} (or bind to 127.0.0.1)")
        return self


def is_loopback(host: str) -> bool:
    """Whether `host` is only reachable from this machine ("" and 0.0.0.0 mean every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SystemdConfig(StrictModel):
    """Integration with systemd (Type=notify units)."""

    watchdog_interval: Duration | None = None
    """Interval of the WATCHDOG=1 pings when $NOTIFY_SOCKET is set; default: half the unit's WatchdogSec."""


class Config(StrictModel):
    """The configuration. `devices` is validated against the registered protocols' device models: validating
    through `Config` validates through `config_model()`, the model built from the protocol registry."""

    site: Site
    """The site this daemon serves: its id is the second level of every MQTT topic and a tag of every series."""
    rooms: list[Room] = Field(default_factory=list)
    """The topology: rooms, their rows, their racks (budgets, feeds, cooling)."""
    devices: list[Device] = Field(default_factory=list)
    """The PDUs, CDUs and chillers polled, one entry each; `protocol` selects the fields that apply."""
    mqtt: MqttConfig = MqttConfig()
    """The MQTT broker readings, statuses and alarms are published to."""
    influxdb: InfluxConfig | None = None
    """The time-series database the ingest writes to; not set: no ingest in this process."""
    ingest: IngestConfig = IngestConfig()
    """The MQTT -> InfluxDB ingest's limits and identity."""
    logging: LoggingConfig = LoggingConfig()
    """Log level and format."""
    http: HttpConfig = HttpConfig()
    """The HTTP API (alarms, acknowledgements, writes, metrics)."""
    systemd: SystemdConfig = SystemdConfig()
    """systemd integration (watchdog)."""
    rules: RulesConfig = RulesConfig()
    """The rule engine: built-in rule packs, own rules, overrides, notifications and control actions."""
    state_dir: str = Field(default="state", examples=["state", "/var/lib/dcim/state"])
    """Directory of the durable state: outboxes, alarm store, audit log, lock. A relative path is taken from the
    working directory (the unit's StateDirectory under systemd)."""
    profile_dirs: list[str] = Field(default_factory=list, examples=[["/etc/dcim/profiles"]])
    """Extra directories of device profiles (YAML); a profile here replaces a built-in of the same name."""
    cluster: ClusterConfig | None = None
    """Several nodes for this site, coordinated through etcd (docs/scale-out.md); not set: this daemon polls
    every device, pages and writes on its own."""
    workers: Literal["auto"] | Annotated[int, Field(ge=0, le=256)] = Field(default=0, examples=["auto", 3])
    """Poll worker processes `dcim run` starts beside itself (docs/architecture.md, "Poll workers"): each
    polls a share of the devices (the protocol work: sockets, framing, decoding) on another core, and the
    daemon keeps schedules, rules, publishing, ingest, alarms and writes. `auto`: one per CPU the daemon may
    run on, less its own (none on one CPU). 0: the daemon polls every device itself. Subscriptions (OPC UA)
    stay in the daemon. Takes effect at a restart."""

    def racks(self) -> Iterator[tuple[Room, Row, Rack]]:
        for room in self.rooms:
            for row in room.rows:
                for rack in row.racks:
                    yield room, row, rack

    def device(self, device_id: str) -> Device:
        for device in self.devices:
            if device.id == device_id:
                return device
        raise KeyError(device_id)

    def extra_profile_dirs(self) -> tuple[Path, ...]:
        return tuple(Path(p) for p in self.profile_dirs)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Config:
        # The static class types the code; the registry's model validates (and keeps each device's own model).
        if cls is Config:
            return config_model().model_validate(obj, **kwargs)
        return super().model_validate(obj, **kwargs)

    @model_validator(mode="after")
    def _ingest_workers_need_broker_and_database(self) -> Config:
        if self.ingest.workers and (self.mqtt.host is None or self.influxdb is None):
            raise ValueError("ingest.workers needs mqtt.host (the workers take from the broker) and influxdb "
                             "(where they store)")
        return self

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if cls is Config:
            return config_model().model_json_schema(*args, **kwargs)
        return super().model_json_schema(*args, **kwargs)


def config_model() -> type[Config]:
    """`Config` with `devices` as the discriminated union of every registered protocol's device model."""
    PROTOCOLS.load_plugins()
    return _config_model(PROTOCOLS.version)


@cache
def _config_model(version: int) -> type[Config]:
    # Keyed on the registry's version: a protocol registered later gets a new model, an old one stays valid.
    models = tuple(spec.device for spec in PROTOCOLS)
    device: Any = models[0] if len(models) == 1 else Annotated[Union[models], Field(discriminator="protocol")]  # noqa: UP007
    built: type[Config] = create_model(
        "Config", __base__=Config, __module__=__name__,
        devices=(list[device], Field(default_factory=list)),
    )
    return built


class ConfigError(Exception):
    def __init__(self, source: str, errors: list[tuple[str, str]]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} error(s)")

    def render(self) -> str:
        lines = [f"{self.source}: {len(self.errors)} error(s)"]
        lines += [f"  {path}: {message}" for path, message in self.errors]
        return "\n".join(lines)


def _loc_path(loc: tuple[int | str, ...], data: Any) -> str:
    """Drop the discriminator tag pydantic puts in the location of a tagged-union member."""
    parts: list[int | str] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part not in node and (
            part in PROTOCOLS or part == node.get("type")  # hook types (rules.notify)
        ):
            continue
        parts.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return error_path(tuple(parts))


# Fields that hold (or may hold) a credential: their values never appear in an error message.
_SECRET_FIELDS = frozenset({"password", "token", "secret", "routing_key", "url", "urls"})


def _message(error: Any) -> str:
    msg = str(error["msg"])
    value = error.get("input")
    if isinstance(value, str) and value and value in msg and _SECRET_FIELDS & {str(p) for p in error["loc"]}:
        msg = msg.replace(value, "**********")
    if error["type"] == "extra_forbidden":
        return "unknown key (typo?)"
    if error["type"] == "union_tag_invalid":
        return f"protocol must be one of {', '.join(PROTOCOLS.names())}"
    return msg.removeprefix("Value error, ")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _references(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """Cross-reference checks on the raw mapping, so they run even when the schema has errors."""
    errors: list[tuple[str, str]] = []
    devices = _list(raw.get("devices"))
    ids: dict[str, int] = {}
    kinds: dict[str, str] = {}
    extra = tuple(Path(p) for p in raw.get("profile_dirs") or [] if isinstance(p, str))
    profiles = available_profiles(extra)
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict):
            continue
        dev_id = dev.get("id")
        if isinstance(dev_id, str):
            if dev_id in ids:
                errors.append((f"devices[{i}].id", f"duplicate device id {dev_id!r} (also devices[{ids[dev_id]}])"))
            ids.setdefault(dev_id, i)
            kinds[dev_id] = str(dev.get("kind"))
        protocol = dev.get("protocol")
        if dev.get("simulate") is True and isinstance(protocol, str) and protocol in PROTOCOLS and \
                PROTOCOLS.get(protocol).simulator is None:
            errors.append((f"devices[{i}].simulate", f"protocol {protocol} has no simulator"))
        name = dev.get("profile")
        if isinstance(name, str):
            if name not in profiles:
                known = ", ".join(profiles)
                errors.append((f"devices[{i}].profile", f"unknown profile {name!r} (known: {known})"))
            else:
                try:
                    profile = load_profile(name, extra, profiles)
                except ProfileError as err:
                    errors += [(f"devices[{i}].profile", f"profile {name}: {p}: {m}") for p, m in err.errors]
                else:
                    if profile.protocol != dev.get("protocol"):
                        errors.append((f"devices[{i}].profile",
                                       f"profile {name} is for {profile.protocol}, the device speaks "
                                       f"{dev.get('protocol')}"))
                    if profile.kind != dev.get("kind"):
                        errors.append((f"devices[{i}].profile",
                                       f"profile {name} is for a {profile.kind}, the device is a {dev.get('kind')}"))
    rack_ids: dict[str, str] = {}
    for ri, room in enumerate(_list(raw.get("rooms"))):
        for wi, row in enumerate(_list(_dict(room).get("rows"))):
            for ki, rack in enumerate(_list(_dict(row).get("racks"))):
                if not isinstance(rack, dict):
                    continue
                here = f"rooms[{ri}].rows[{wi}].racks[{ki}]"
                rack_id = rack.get("id")
                if isinstance(rack_id, str):
                    if rack_id in rack_ids:
                        errors.append((f"{here}.id", f"duplicate rack id {rack_id!r} (also {rack_ids[rack_id]})"))
                    rack_ids.setdefault(rack_id, here)
                cdu = rack.get("cdu")
                if isinstance(cdu, str) and kinds.get(cdu) != "cdu":
                    errors.append((f"{here}.cdu", f"{cdu!r} is not a CDU device"))
                if rack.get("cooling") == "liquid" and cdu is None:
                    errors.append((f"{here}.cdu", "a liquid-cooled rack needs the CDU that serves it"))
                for side, feed in _dict(rack.get("feeds")).items():
                    pdu = feed.get("pdu") if isinstance(feed, dict) else None
                    if isinstance(pdu, str) and kinds.get(pdu) != "pdu":
                        errors.append((f"{here}.feeds.{side}.pdu", f"{pdu!r} is not a PDU device"))
    for i, dev in enumerate(devices):
        if isinstance(dev, dict) and isinstance(dev.get("rack"), str) and dev["rack"] not in rack_ids:
            errors.append((f"devices[{i}].rack", f"unknown rack {dev['rack']!r}"))
    return errors


def parse_config(raw: Any, source: str = "<config>") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(source, [("(top)", "the configuration must be a mapping")])
    errors: list[tuple[str, str]] = []
    config: Config | None = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        errors += [(_loc_path(e["loc"], raw), _message(e)) for e in err.errors()]
    errors += _references(raw)
    if config is not None:
        errors += check_references(config)
    if errors or config is None:
        raise ConfigError(source, errors)
    return config


def _duplicate_keys(node: yaml.Node | None, loc: tuple[int | str, ...] = ()) -> list[tuple[str, str]]:
    """Keys given twice in one mapping, with their path: YAML says keys are unique, PyYAML keeps the last
    silently, and a block pasted twice would quietly change a port or a limit."""
    errors: list[tuple[str, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = str(key_node.value)
            if key == "<<":
                continue  # a merge key: overriding what it merges is allowed
            if key in seen:
                errors.append((error_path((*loc, key)),
                               f"duplicate key (line {key_node.start_mark.line + 1}; first at line {seen[key]})"))
            else:
                seen[key] = key_node.start_mark.line + 1
            errors += _duplicate_keys(value_node, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            errors += _duplicate_keys(item, (*loc, i))
    return errors


def _yaml_error(err: yaml.YAMLError) -> tuple[str, str]:
    """A YAML error as (where, what) without the snippet of the file PyYAML appends: the line may hold a
    value someone would rather not see in a log."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"(yaml) line {mark.line + 1}, column {mark.column + 1}", str(err.problem or err.context)
    return "(yaml)", str(err)


def load_yaml(path: str | Path) -> Any:
    """The file's YAML: UTF-8, unique keys. Raises ConfigError naming the file and the place."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(str(path), [("(file)", err.strerror or str(err))]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(str(path), [("(file)", f"not UTF-8 text: byte 0x{data[err.start]:02x} at line {line} "
                                                 f"(offset {err.start}); save the file as UTF-8")]) from None
    if _FAST_LOADER is not yaml.SafeLoader:
        try:
            return _parse_yaml(text, path, _FAST_LOADER)
        except yaml.YAMLError:
            pass  # PyYAML's own parser says why, in its words (or, where the two differ, reads it)
    try:
        return _parse_yaml(text, path, yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError(str(path), [_yaml_error(err)]) from None


# libyaml's parser where PyYAML was built with it (the usual wheels are): several times faster on a large
# configuration. The constructor (what a value becomes) is PyYAML's Python one either way.
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(text: str, path: Path, loader_class: type[yaml.SafeLoader]) -> Any:
    """The document; ConfigError for keys given twice, yaml.YAMLError for what is not YAML."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        duplicates = _duplicate_keys(node)
        if duplicates:
            raise ConfigError(str(path), duplicates)
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def load_config(path: str | Path) -> Config:
    # What is read lives as long as the process (or until a reload): no collection while it is built.
    with collector.paused():
        return parse_config(load_yaml(path), str(Path(path)))


def json_schema() -> dict[str, Any]:
    return Config.model_json_schema(schema_generator=DocumentedSchema)
