"""`Sample` is built by setting its slots directly (dcim/core/samples.py): the same fields, defaults,
equality and immutability as the dataclass it is."""

import dataclasses
import pickle

import pytest

from dcim.core.samples import Quality, Sample


def test_positional_and_keyword_construction_agree_and_defaults_hold() -> None:
    a = Sample("cdu-1", "supply_temp_c", 18.5, 123)
    b = Sample(device="cdu-1", point="supply_temp_c", value=18.5, ts_ns=123)
    assert a == b and hash(a) == hash(b)
    assert (a.quality, a.reason, a.measurement, a.tags) == (Quality.GOOD, "", "", ())
    c = Sample("pdu-1", "power_w", None, 5, Quality.BAD, "timeout", "pdu_outlet", (("outlet", "7"),))
    assert [getattr(c, f.name) for f in dataclasses.fields(Sample)] == [
        "pdu-1", "power_w", None, 5, Quality.BAD, "timeout", "pdu_outlet", (("outlet", "7"),)]
    assert not c.ok and a.ok
    assert "Sample(device='cdu-1'" in repr(a)


def test_still_frozen_and_picklable() -> None:
    a = Sample("cdu-1", "flow_lpm", 40.0, 1, measurement="cdu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.value = 1.0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(a)) == a
    assert dataclasses.replace(a, value=2.0).value == 2.0


def test_a_missing_or_unknown_argument_is_refused() -> None:
    with pytest.raises(TypeError):
        Sample("cdu-1", "flow_lpm", 40.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample("cdu-1", "flow_lpm", 40.0, 1, colour="red")  # type: ignore[call-arg]


def test_the_fast_init_takes_every_field_of_the_dataclass() -> None:
    """A field added to `Sample` must be added to `_sample_init` too, or it would be left unset."""
    import inspect
    params = list(inspect.signature(Sample.__init__).parameters)[1:]
    assert params == [f.name for f in dataclasses.fields(Sample)]
