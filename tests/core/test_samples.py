"""`Sample` is a slots dataclass that the type checker holds read-only (dcim/core/samples.py): the fields,
defaults, equality, hashing and pickling of the frozen dataclass it was, with the plain (fast) `__init__`."""

import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from dcim.core.samples import Quality, Sample, slots_record

REPO = Path(__file__).resolve().parents[2]


def test_positional_and_keyword_construction_agree_and_defaults_hold() -> None:
    a = Sample("cdu-1", "supply_temp_c", 18.5, 123)
    b = Sample(device="cdu-1", point="supply_temp_c", value=18.5, ts_ns=123)
    assert a == b and hash(a) == hash(b)
    assert (a.quality, a.reason, a.measurement, a.tags) == (Quality.GOOD, "", "", ())
    c = Sample("pdu-1", "power_w", None, 5, Quality.BAD, "timeout", "pdu_outlet", (("outlet", "7"),))
    assert [getattr(c, f.name) for f in dataclasses.fields(Sample)] == [
        "pdu-1", "power_w", None, 5, Quality.BAD, "timeout", "pdu_outlet", (("outlet", "7"),), ""]
    assert not c.ok and a.ok
    assert "Sample(device='cdu-1'" in repr(a)
    assert a != dataclasses.replace(a, ts_ns=124) and hash(a) != hash(dataclasses.replace(a, value=18.6))


def test_a_values_text_is_carried_but_is_not_what_the_sample_is() -> None:
    # A driver's text of the value (the line protocol's, made with the decoding) travels with the sample
    # to the encoder; two samples of the same reading are equal and hash alike whether they have it or not.
    a = Sample("pdu-1", "power_w", 230.41718, 5)
    b = Sample("pdu-1", "power_w", 230.41718, 5, Quality.GOOD, "", "", (), "230.41718")
    assert b.text == "230.41718" and a.text == ""
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    assert pickle.loads(pickle.dumps(b)).text == "230.41718"


def test_picklable_and_replaceable_with_slots() -> None:
    a = Sample("cdu-1", "flow_lpm", 40.0, 1, measurement="cdu")
    assert pickle.loads(pickle.dumps(a)) == a
    assert dataclasses.replace(a, value=2.0).value == 2.0
    assert not hasattr(a, "__dict__")


def test_a_missing_or_unknown_argument_is_refused() -> None:
    with pytest.raises(TypeError):
        Sample("cdu-1", "flow_lpm", 40.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample("cdu-1", "flow_lpm", 40.0, 1, colour="red")  # type: ignore[call-arg]


def test_the_type_checker_refuses_an_assignment_to_a_field(tmp_path: Path) -> None:
    """Read-only is the type checker's (the interpreter would let it pass): mypy refuses it, as for a frozen
    dataclass."""
    assert slots_record.__dataclass_transform__["kwargs"] == {"frozen_default": True}  # type: ignore[attr-defined]
    code = tmp_path / "assigns.py"
    code.write_text("from dcim.core.samples import Sample\n"
                    "s = Sample('cdu-1', 'flow_lpm', 40.0, 1)\n"
                    "s.value = 2.0\n")
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent",
                             str(code)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Property "value" defined in "Sample" is read-only' in result.stdout
