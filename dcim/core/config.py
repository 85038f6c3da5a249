"""Configuration base types every layer builds its models on: strict models, durations, ids, error paths."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

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


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class StrictModel(BaseModel):
    """Configuration base: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def error_path(loc: tuple[int | str, ...]) -> str:
    """('devices', 3, 'port') -> 'devices[3].port'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
