"""What the daemon writes to InfluxDB, derived from the code that defines it (never listed by hand where
the code has it): measurements, their fields and their tags. Dashboards may name nothing else.

- device measurements (pdu, pdu_outlet, cdu, chiller): every readable point of every profile in
  drivers/profiles, its `measurement` (default: the profile's kind), its row tag (`index_tag`) and constant
  tags; the static tags come from dcim.core.topology (site, room, row, rack, feed, device).
- plant: rules.metrics.CDU_METRICS (the cooling-plant points the rule engine derives per CDU), device tags.
- rack: rules.model.RACK_METRICS, tags of a rack in dcim.core.topology (site, room, row, rack, cdu).
- alarm: one line per alarm change (rules.service): tags rule, severity and the subject's topology tags,
  fields state, value, threshold, message, acknowledged, ack_by.
- device_status: one line per change of a device's availability (dcim.app.publisher): fields online, error;
  the device's topology tags and its kind.
- every line may carry `quality` and `quality_reason` (dcim.core.lineproto).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dcim.app.config import Config
from dcim.core.topology import Topology
from dcim.drivers.profiles import available_profiles, load_profile
from dcim.rules.metrics import CDU_METRICS
from dcim.rules.model import RACK_METRICS

QUALITY_FIELDS = {"quality", "quality_reason"}
DEVICE_TAGS = {"site", "room", "row", "rack", "feed", "device"}
ALARM_FIELDS = {"state", "value", "threshold", "message", "acknowledged", "ack_by"}
# rules.service publishes alarm samples tagged rule and severity; the publisher adds the subject's
# topology tags (a device's or a rack's, dcim.core.topology).
ALARM_TAGS = {"rule", "severity", "site", "room", "row", "rack", "device", "feed", "cdu"}


@dataclass
class Measurement:
    fields: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)


def written_schema() -> dict[str, Measurement]:
    schema: dict[str, Measurement] = {}
    for name in available_profiles():
        profile = load_profile(name)
        for point in profile.points:
            if getattr(point, "readable", True) is False:
                continue
            m = schema.setdefault(profile.measurement(point), Measurement(tags=set(DEVICE_TAGS)))
            m.fields.add(point.name)
            index_tag = getattr(point, "index_tag", None)
            if index_tag:
                m.tags.add(index_tag)
            m.tags.update(getattr(point, "tags", {}) or {})
    schema["plant"] = Measurement(set(CDU_METRICS), set(DEVICE_TAGS))
    schema["rack"] = Measurement(set(RACK_METRICS), {"site", "room", "row", "rack", "cdu"})
    schema["alarm"] = Measurement(set(ALARM_FIELDS), set(ALARM_TAGS))
    schema["device_status"] = Measurement({"online", "error"}, DEVICE_TAGS | {"kind"})
    for m in schema.values():
        m.fields |= QUALITY_FIELDS
    return schema


def rack_tags_of(config: Config) -> set[str]:
    """Tag keys dcim.core.topology really gives rack lines (so the `cdu` tag is checked, not assumed)."""
    topology = Topology(config)
    return {key for rack in topology.racks for key, _ in topology.tags(rack)}


_FROM = re.compile(r'\bFROM\s+(?:"(?P<name>[^"]+)"|/\^\((?P<alts>[a-z_|]+)\)\$/)')
_ALIAS = re.compile(r'\bAS\s+"([^"]+)"')
_QUOTED = re.compile(r'"([^"]+)"')
_UNQUOTED_ARG = re.compile(r"\b(mean|last|first|sum|count|max|min|median|spread|mode|stddev)\((?!\")")


def identifiers(query: str) -> tuple[set[str], set[str], set[str]]:
    """(measurements named after FROM, aliases defined with AS, every double-quoted identifier)."""
    froms: set[str] = set()
    for match in _FROM.finditer(query):
        if match.group("name"):
            froms.add(match.group("name"))
        else:
            froms.update(match.group("alts").split("|"))
    return froms, set(_ALIAS.findall(query)), set(_QUOTED.findall(query))


def unknown_names(query: str, schema: dict[str, Measurement]) -> list[str]:
    """Names in `query` that the daemon does not write; empty when the query is clean."""
    problems: list[str] = []
    if _UNQUOTED_ARG.search(query):
        problems.append(f"unquoted identifier in a function call: {_UNQUOTED_ARG.search(query)}")
    froms, aliases, quoted = identifiers(query)
    if not froms:
        problems.append("no FROM measurement")
    for measurement in froms:
        if measurement not in schema:
            problems.append(f"measurement {measurement!r} is not written")
    known_fields = set().union(*(schema[m].fields for m in froms if m in schema))
    known_tags = set().union(*(schema[m].tags for m in froms if m in schema))
    for name in quoted - froms - aliases:
        if name not in known_fields and name not in known_tags:
            problems.append(f"{name!r} is neither a field nor a tag of {sorted(froms)}")
    return problems
