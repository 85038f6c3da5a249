"""Configuration base types every layer builds its models on: strict models, durations, ids, error paths."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

DeviceKind = Literal["pdu", "cdu", "chiller"]
Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]


def parse_duration(value: Any) -> Any:
    """Accept seconds as a number or a string with a unit: `250ms`, `1s`, `2.5s`, `5m`, `1h`."""
    if isinstance(value, str):
        text = value.strip().lower()
        for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
            if text.endswith(suffix):
                number = text[: -len(suffix)].strip()
                try:
                    return float(number) * factor
                except ValueError:
                    break
        try:
            return float(text)
        except ValueError as err:
            raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 1s, 5m)") from err
    return value


# The JSON Schema of a duration says what `parse_duration` accepts: a number of seconds, or a string of a
# number and a unit (ms, s, m, h, any case, blanks allowed around). Written out here because pydantic would
# describe only the float the validator produces, and editors would flag every "30s" of a valid file.
_DURATION_TEXT = r"^\s*\+?{nonzero}(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*([mM][sS]|[sSmMhH])?\s*$"
_DURATION_EXAMPLES = ["30s", "500ms", "5m", "1h", 2.5]


def _duration_schema(*, positive: bool) -> dict[str, Any]:
    bound = {"exclusiveMinimum": 0} if positive else {"minimum": 0}
    # A positive duration's text needs a non-zero digit before any exponent ("0s" and "0.0ms" are refused).
    text = _DURATION_TEXT.format(nonzero="(?=[0.]*[1-9])" if positive else "")
    return {"anyOf": [{"type": "number", **bound}, {"type": "string", "pattern": text}],
            "examples": _DURATION_EXAMPLES}


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0),
                     WithJsonSchema(_duration_schema(positive=False))]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0),
                             WithJsonSchema(_duration_schema(positive=True))]


class StrictModel(BaseModel):
    """Configuration base: unknown keys are errors, so a typo never passes silently.

    Each field's docstring (the string literal under it) is its description in `dcim schema`, which editors
    show on hover: write it for the engineer who fills in the file. tests/config/test_schema.py fails on a
    field without one."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def error_path(loc: tuple[int | str, ...]) -> str:
    """('devices', 3, 'port') -> 'devices[3].port'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
