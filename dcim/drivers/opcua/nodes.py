"""From profile points to NodeIds, and from DataValues to samples (and back, for writes).

Namespace indexes are only valid for one run of one server, so `resolve` runs after every (re)connect: it
reads the namespace array, turns `nsu=` NodeIds and browse paths into NodeIds, and reads each node's DataType
and, where the server offers them, its EURange and EngineeringUnits (AnalogItemType properties), all in
three requests whatever the number of points.

Quality of a value, from its OPC UA StatusCode:
    Good                       -> GOOD
    Uncertain, with a value    -> STALE, reason = the status name (usable, but not known to be current)
    Uncertain, without a value -> BAD
    Bad                        -> BAD, value None, reason = the status name (e.g. BadSensorFailure)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from dcim.core.samples import Quality, Sample, Value
from dcim.drivers.errors import BadResponse, WriteRejected
from dcim.drivers.opcua.points import Point
from dcim.drivers.profiles import Profile

UNECE = {"degC": 4408652, "kW": 4937556, "kPa": 4935745, "%": 20529, "L/min": 19506}
_CLARK = re.compile(r"^\{([^}]+)\}(.+)$")
# Built-in DataType NodeIds (ns=0;i=1..25) are the VariantType numbers (Part 6, 5.1.2).
_MAX_BUILTIN = 25
_ENUMERATION = 29
_INTEGER_TYPES = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
_FLOAT_TYPES = (ua.VariantType.Float, ua.VariantType.Double)
MISSING = "missing"


def standard_node(ident: int) -> ua.NodeId:
    """A node of the standard namespace (ns=0), e.g. ObjectIds.ObjectsFolder."""
    return ua.NodeId(ua.Int32(ident))


def string_node(ident: str, namespace: int) -> ua.NodeId:
    return ua.NodeId(ua.String(ident), ua.Int16(namespace))


class ResolveError(BadResponse):
    """The server does not have a namespace the profile needs."""


@dataclass(slots=True)
class Resolved:
    """One profile point on one connection to one server."""

    point: Point
    node_id: ua.NodeId | None
    # Why the node could not be found (a status name), "" when it was.
    error: str = ""
    variant_type: ua.VariantType | None = None
    eu_range: tuple[float, float] | None = None
    eu_unit: str = ""
    eu_unit_id: int | None = None
    measurement: str = ""
    tags: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _namespace_index(uri: str, namespaces: list[str]) -> int:
    try:
        return namespaces.index(uri)
    except ValueError:
        raise ResolveError(f"the server has no namespace {uri!r} (it has: {', '.join(namespaces)})") from None


def node_id(reference: str, namespaces: list[str]) -> ua.NodeId:
    """`nsu=<uri>;s=<id>` -> NodeId with the namespace index this server uses today."""
    uri, _, ident = reference[4:].partition(";")
    return ua.NodeId.from_string(f"ns={_namespace_index(uri, namespaces)};{ident}")


def _relative_path(segments: list[str], default_uri: str | None, namespaces: list[str]) -> ua.RelativePath:
    elements = []
    for segment in segments:
        match = _CLARK.match(segment)
        if match:
            uri, name = match.group(1), match.group(2)
        elif default_uri is not None:
            uri, name = default_uri, segment
        else:
            raise ResolveError(f"browse path segment {segment!r} needs {{uri}} or the profile's options.namespace")
        target = ua.QualifiedName(name, _namespace_index(uri, namespaces))
        elements.append(_element(ObjectIds.HierarchicalReferences, target))
    path = ua.RelativePath()
    path.Elements = elements
    return path


def _browse(start: ua.NodeId, path: ua.RelativePath) -> ua.BrowsePath:
    browse = ua.BrowsePath()
    browse.StartingNode = start
    browse.RelativePath = path
    return browse


def _property_path(name: str) -> ua.RelativePath:
    path = ua.RelativePath()
    path.Elements = [_element(ObjectIds.HasProperty, ua.QualifiedName(name, 0))]
    return path


def _element(reference: int, target: ua.QualifiedName) -> ua.RelativePathElement:
    # Keyword arguments, because asyncua annotates these fields with its own `ua.Boolean` class.
    fields: dict[str, Any] = {"ReferenceTypeId": standard_node(reference), "IsInverse": False,
                              "IncludeSubtypes": True, "TargetName": target}
    return ua.RelativePathElement(**fields)


def _target(result: ua.BrowsePathResult) -> tuple[ua.NodeId | None, str]:
    if not result.StatusCode.is_good() or not result.Targets:
        return None, result.StatusCode.name
    target = result.Targets[0].TargetId
    return ua.NodeId(target.Identifier, target.NamespaceIndex), ""


async def read_values(client: Client, nodes: list[ua.NodeId], attribute: AttributeIds) -> list[ua.DataValue]:
    params = ua.ReadParameters()
    params.TimestampsToReturn = ua.TimestampsToReturn.Both
    for node in nodes:
        rv = ua.ReadValueId()
        rv.NodeId = node
        rv.AttributeId = attribute
        params.NodesToRead.append(rv)
    if not params.NodesToRead:
        return []
    return await client.uaclient.read(params)


async def resolve(client: Client, profile: Profile[Point]) -> list[Resolved]:
    namespaces: list[str] = await client.get_namespace_array()
    default_uri = profile.options.get("namespace")
    default_uri = default_uri if isinstance(default_uri, str) else None
    out = [Resolved(p, None, measurement=profile.measurement(p)) for p in profile.points]
    paths: list[tuple[Resolved, ua.BrowsePath]] = []
    objects = standard_node(ObjectIds.ObjectsFolder)
    for item in out:
        ref = item.point.node
        if ref.startswith("/"):
            segments = ref[1:].split("/")
            paths.append((item, _browse(objects, _relative_path(segments, default_uri, namespaces))))
        else:
            item.node_id = node_id(ref, namespaces)
    if paths:
        results = await client.uaclient.translate_browsepaths_to_nodeids([b for _, b in paths])
        for (item, _), result in zip(paths, results, strict=True):
            item.node_id, item.error = _target(result)
    found = [item for item in out if item.node_id is not None]
    ids: list[ua.NodeId] = [item.node_id for item in found if item.node_id is not None]
    props = [_browse(n, _property_path(name)) for n in ids for name in ("EURange", "EngineeringUnits")]
    prop_results = await client.uaclient.translate_browsepaths_to_nodeids(props) if props else []
    prop_ids = [_target(r)[0] for r in prop_results]
    values = await read_values(client, ids, AttributeIds.DataType)
    prop_values = await read_values(client, [p for p in prop_ids if p is not None], AttributeIds.Value)
    prop_iter = iter(prop_values)
    for i, (item, dtype) in enumerate(zip(found, values, strict=True)):
        if dtype.StatusCode is not None and dtype.StatusCode.is_bad():
            item.error = dtype.StatusCode.name
            item.node_id = None
            continue
        item.variant_type = variant_type(dtype.Value.Value if dtype.Value is not None else None)
        eu_range = next(prop_iter) if prop_ids[2 * i] is not None else None
        eu_info = next(prop_iter) if prop_ids[2 * i + 1] is not None else None
        rng = _payload(eu_range)
        if isinstance(rng, ua.Range) and rng.Low is not None and rng.High is not None:
            item.eu_range = (float(rng.Low), float(rng.High))
        info = _payload(eu_info)
        if isinstance(info, ua.EUInformation):
            item.eu_unit = (info.DisplayName.Text or "") if info.DisplayName else ""
            item.eu_unit_id = info.UnitId
    return out


def _payload(value: ua.DataValue | None) -> Any:
    if value is None or value.Value is None or (value.StatusCode is not None and not value.StatusCode.is_good()):
        return None
    return value.Value.Value


def variant_type(data_type: Any) -> ua.VariantType | None:
    if not isinstance(data_type, ua.NodeId) or data_type.NamespaceIndex != 0:
        return None
    ident = data_type.Identifier
    if isinstance(ident, int) and 1 <= ident <= _MAX_BUILTIN:
        return ua.VariantType(ident)
    if ident == _ENUMERATION:
        return ua.VariantType.Int32
    return None


def unit_mismatch(item: Resolved) -> str:
    """A warning when the server's EngineeringUnits disagree with the profile's unit, else ""."""
    expected = UNECE.get(item.point.unit)
    if item.eu_unit_id is None or expected is None or expected == item.eu_unit_id:
        return ""
    return (
        f"{item.point.name}: the server says the unit is {item.eu_unit or item.eu_unit_id} "
        f"(UNECE {item.eu_unit_id}), the profile says {item.point.unit} (UNECE {expected})"
    )


def bad(device: str, item: Resolved, reason: str, ts_ns: int) -> Sample:
    return Sample(device, item.point.name, None, ts_ns, Quality.BAD, reason, item.measurement, item.tags)


def to_sample(device: str, item: Resolved, dv: ua.DataValue | None, now_ns: int) -> Sample | None:
    """One DataValue -> one sample in the profile's terms; None for a "not supported" (missing) value."""
    point = item.point
    if dv is None:
        return bad(device, item, item.error or "no value", now_ns)
    status = dv.StatusCode if dv.StatusCode is not None else ua.StatusCode()
    ts = _timestamp(dv, now_ns)
    if status.is_bad():
        return bad(device, item, status.name, ts)
    raw = dv.Value.Value if dv.Value is not None else None
    if raw is None:
        return bad(device, item, status.name if status.is_uncertain() else "null value", ts)
    value, problem = decode(point, raw)
    if problem == MISSING:
        return None
    if problem:
        return bad(device, item, problem, ts)
    quality, reason = (Quality.STALE, status.name) if status.is_uncertain() else (Quality.GOOD, "")
    return Sample(device, point.name, value, ts, quality, reason, item.measurement, item.tags)


def _timestamp(dv: ua.DataValue, now_ns: int) -> int:
    # The source timestamp is when the device measured; without one, when we heard of it.
    stamp = dv.SourceTimestamp or dv.ServerTimestamp
    if stamp is None:
        return now_ns
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1_000_000_000)


def decode(point: Point, raw: Any) -> tuple[Value | None, str]:
    """A raw OPC UA value -> (canonical value, ""), or (None, why not)."""
    if point.enum is not None:
        if isinstance(raw, bool) or not isinstance(raw, int):
            return None, f"expected an enumeration value, got {type(raw).__name__}"
        if raw not in point.enum:
            return None, f"unknown state {raw}"
        return point.enum[raw], ""
    if isinstance(raw, bool):
        return raw, ""
    if isinstance(raw, int | float):
        number = float(raw)
        if not math.isfinite(number):
            return None, f"not a finite number: {raw}"
        if number in point.missing:
            return None, MISSING
        return number, ""
    return None, f"expected a number, got {type(raw).__name__}"


def encode(item: Resolved, value: Value) -> ua.Variant:
    """A checked canonical value -> a Variant of the node's own type. Raises WriteRejected."""
    point = item.point
    vtype = item.variant_type
    if vtype is None:
        raise WriteRejected(f"{point.name}: the node's DataType is not a built-in type the driver can write")
    if point.enum is not None and isinstance(value, str):
        codes = {label: code for code, label in point.enum.items()}
        value = codes[value]
    if vtype is ua.VariantType.Boolean:
        if isinstance(value, bool):
            return ua.Variant(value, vtype)
        if isinstance(value, int | float) and value in (0, 1):
            return ua.Variant(bool(value), vtype)
        raise WriteRejected(f"{point.name}: {value!r} is not a boolean")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRejected(f"{point.name}: {value!r} is not a number (the node is {vtype.name})")
    if vtype in _FLOAT_TYPES:
        return ua.Variant(float(value), vtype)
    if vtype in _INTEGER_TYPES:
        low, high = _INTEGER_TYPES[vtype]
        number = round(value)
        if abs(number - value) > 1e-9:
            raise WriteRejected(f"{point.name}: {value} is not a whole number (the node is {vtype.name})")
        if not low <= number <= high:
            raise WriteRejected(f"{point.name}: {value} does not fit the node's {vtype.name}")
        return ua.Variant(number, vtype)
    raise WriteRejected(f"{point.name}: cannot write a number to a {vtype.name} node")


def derive(point: Point, values: dict[str, Sample], device: str, now_ns: int, measurement: str) -> Sample:
    """A point the server lacks, computed from two others (COP = cooling_kw / power_kw)."""
    assert point.derive is not None
    num = values.get(point.derive.numerator)
    den = values.get(point.derive.denominator)
    worst = Quality.GOOD
    for part in (num, den):
        if part is None or part.quality is Quality.BAD or not isinstance(part.value, int | float):
            reason = f"derived from {point.derive.numerator} / {point.derive.denominator}, which are unavailable"
            return Sample(device, point.name, None, now_ns, Quality.BAD, reason, measurement)
        if part.quality is Quality.STALE:
            worst = Quality.STALE
    assert num is not None and den is not None
    assert isinstance(num.value, int | float) and isinstance(den.value, int | float)
    # A chiller that draws no power is stopped: the simulator and most chillers report COP 0 then.
    ratio = float(num.value) / float(den.value) if den.value > 0 else 0.0
    ts = max(num.ts_ns, den.ts_ns)
    reason = "derived" if worst is Quality.GOOD else "derived from stale values"
    return Sample(device, point.name, round(ratio, 3), ts, worst, reason if worst is not Quality.GOOD else "",
                  measurement)
