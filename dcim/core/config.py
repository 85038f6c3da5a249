"""Configuration base types every layer builds its models on: strict models, durations, ids, error paths."""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

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
    field without one. They are read from the source when the schema is made (`DocumentedSchema`), not by
    pydantic's `use_attribute_docstrings` at every start: that parsed the source of every model class at
    import, about a quarter of a second of CPU before `dcim run` could refuse a taken port."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_OWN_DOCS: dict[type, dict[str, str]] = {}


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring under it, for `cls` and its bases (a subclass's own docstring wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.split(".")[0] in ("builtins", "pydantic"):
            continue
        own = _OWN_DOCS.get(klass)
        if own is None:
            own = _OWN_DOCS[klass] = _own_attribute_docs(klass)
        docs.update(own)
    return docs


def _own_attribute_docs(klass: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return {}  # no source (a model made at run time has its bases' docstrings)
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.ClassDef):
        return {}
    docs: dict[str, str] = {}
    for field, under in zip(node.body, node.body[1:], strict=False):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                and isinstance(under, ast.Expr) and isinstance(under.value, ast.Constant)
                and isinstance(under.value.value, str)):
            docs[field.target.id] = inspect.cleandoc(under.value.value)
    return docs


class DocumentedSchema(GenerateJsonSchema):
    """The JSON Schema generator of `dcim schema`: a field without an explicit description gets its docstring."""

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        json_schema = super().model_schema(schema)
        cls = schema["cls"]
        properties = json_schema.get("properties")
        fields = getattr(cls, "model_fields", None)
        if isinstance(properties, dict) and fields:
            docs = attribute_docs(cls)
            for name, info in fields.items():
                prop = properties.get(info.alias or name)
                if isinstance(prop, dict) and "description" not in prop and name in docs:
                    prop["description"] = docs[name]
        return json_schema


def error_path(loc: tuple[int | str, ...]) -> str:
    """('devices', 3, 'port') -> 'devices[3].port'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
