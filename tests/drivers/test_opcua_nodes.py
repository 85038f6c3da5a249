"""Value conversion both ways, without a server: DataValue -> sample (quality from the StatusCode) and
canonical value -> Variant of the node's DataType (refused before sending when it does not fit)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.status_codes import StatusCodes

from dcim.core.samples import Quality, Sample
from dcim.drivers.errors import WriteRejected
from dcim.drivers.opcua.nodes import Resolved, encode, to_sample, variant_type
from dcim.drivers.opcua.points import Point
from dcim.drivers.opcua.subscriber import by_time

STATUS = Point(name="status", node="nsu=urn:x;s=S", enum={0: "stopped", 1: "running"})
TEMP = Point(name="leaving_temp_c", unit="degC", node="nsu=urn:x;s=T", missing=[-1])


def dv(value: Any, vtype: ua.VariantType, status: str = "Good") -> ua.DataValue:
    code = ua.StatusCode(getattr(StatusCodes, status))
    stamp = ua.DateTime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return ua.DataValue(ua.Variant(value, vtype) if value is not None else None, StatusCode=code,
                        SourceTimestamp=stamp)


@pytest.mark.parametrize(
    ("point", "value", "status", "quality", "expected", "reason"),
    [
        (TEMP, 18.25, "Good", Quality.GOOD, 18.25, ""),
        (TEMP, 18.25, "UncertainSensorNotAccurate", Quality.STALE, 18.25, "UncertainSensorNotAccurate"),
        (TEMP, None, "UncertainLastUsableValue", Quality.BAD, None, "UncertainLastUsableValue"),
        (TEMP, None, "BadSensorFailure", Quality.BAD, None, "BadSensorFailure"),
        (TEMP, "18.25", "Good", Quality.BAD, None, "expected a number, got str"),
        (TEMP, float("nan"), "Good", Quality.BAD, None, "not a finite number: nan"),
        (STATUS, 1, "Good", Quality.GOOD, "running", ""),
        (STATUS, 7, "Good", Quality.BAD, None, "unknown state 7"),
    ],
)
def test_data_values_become_samples(point: Point, value: Any, status: str, quality: Quality, expected: Any,
                                    reason: str) -> None:
    vtype = ua.VariantType.Int32 if point.enum else (
        ua.VariantType.String if isinstance(value, str) else ua.VariantType.Double)
    sample = to_sample("ch", Resolved(point, None, measurement="chiller"), dv(value, vtype, status), 0)
    assert sample is not None
    assert (sample.quality, sample.value, sample.reason) == (quality, expected, reason)
    assert sample.ts_ns == int(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()) * 10**9
    assert not (sample.quality is Quality.BAD and sample.value is not None)


def test_a_not_supported_value_is_omitted() -> None:
    assert to_sample("ch", Resolved(TEMP, None), dv(-1.0, ua.VariantType.Double), 0) is None


def test_a_missing_node_is_a_bad_sample_naming_the_status() -> None:
    sample = to_sample("ch", Resolved(TEMP, None, error="BadNoMatch"), None, 5)
    assert sample is not None and (sample.quality, sample.reason, sample.ts_ns) == (Quality.BAD, "BadNoMatch", 5)


def resolved(vtype: ua.VariantType, point: Point = TEMP) -> Resolved:
    return Resolved(point, ua.NodeId(ua.String("x"), ua.Int16(2)), variant_type=vtype)


@pytest.mark.parametrize(
    ("vtype", "value", "raw"),
    [
        (ua.VariantType.Double, 17, 17.0),
        (ua.VariantType.Float, 17.5, 17.5),
        (ua.VariantType.Int16, 17.0, 17),
        (ua.VariantType.UInt32, 80, 80),
        (ua.VariantType.Boolean, 1, True),
        (ua.VariantType.Boolean, False, False),
    ],
)
def test_writes_take_the_nodes_datatype(vtype: ua.VariantType, value: Any, raw: Any) -> None:
    variant = encode(resolved(vtype), value)
    assert variant.VariantType == vtype and variant.Value == raw and type(variant.Value) is type(raw)


@pytest.mark.parametrize(
    ("vtype", "value", "message"),
    [
        (ua.VariantType.Int16, 17.5, "not a whole number"),
        (ua.VariantType.Byte, 300, "does not fit the node's Byte"),
        (ua.VariantType.UInt16, -1, "does not fit"),
        (ua.VariantType.Boolean, 2, "not a boolean"),
        (ua.VariantType.Double, True, "not a number"),
        (ua.VariantType.String, 1.0, "cannot write a number to a String node"),
    ],
)
def test_writes_that_do_not_fit_are_refused(vtype: ua.VariantType, value: Any, message: str) -> None:
    with pytest.raises(WriteRejected, match=message):
        encode(resolved(vtype), value)


def test_enum_writes_send_the_code_and_unknown_types_are_refused() -> None:
    assert encode(resolved(ua.VariantType.Int32, STATUS), "running").Value == 1
    with pytest.raises(WriteRejected, match="not a built-in type"):
        encode(Resolved(TEMP, ua.NodeId(ua.String("x"), ua.Int16(2))), 1.0)


def test_datatypes_map_to_variant_types() -> None:
    assert variant_type(ua.NodeId(ua.Int32(11))) == ua.VariantType.Double
    assert variant_type(ua.NodeId(ua.Int32(29))) == ua.VariantType.Int32  # Enumeration
    assert variant_type(ua.NodeId(ua.Int32(3000), ua.Int16(2))) is None


def test_samples_are_split_by_their_times_oldest_first() -> None:
    def s(point: str, value: float, ts: int) -> Sample:
        return Sample("chiller-1", point, value, ts, Quality.GOOD, "", "chiller", ())

    groups = by_time([s("a", 1.0, 20), s("b", 2.0, 10), s("a", 3.0, 20), s("c", 4.0, 10)])
    assert [[(x.point, x.value, x.ts_ns) for x in g] for g in groups] == [
        [("b", 2.0, 10), ("c", 4.0, 10)], [("a", 3.0, 20)]]
