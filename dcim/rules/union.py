"""A configuration union built from a registry: the model is chosen by a tag field (`kind`, `type`).

    Rule = Annotated[RuleBase, RegistryUnion(RULE_KINDS, "kind", lambda k: k.model, default="threshold")]

Unlike a pydantic discriminated union, the members are looked up in the registry when a value is validated
and when the JSON Schema is generated, so a kind registered later (a plugin's entry point, loaded on first
use) needs no rebuild of the models that contain the union. The chosen model validates the mapping itself,
so its errors keep their paths relative to the mapping (`rules.rules[3].warning`, no tag in between), and
an unknown or missing tag is reported at the tag's own path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

from dcim.core.registry import Registry

T = TypeVar("T")


class RegistryUnion(Generic[T]):
    def __init__(self, registry: Registry[T], tag: str, model_of: Callable[[T], type[BaseModel]], *,
                 default: str | None = None) -> None:
        self.registry = registry
        self.tag = tag
        self.model_of = model_of
        self.default = default

    def models(self) -> dict[str, type[BaseModel]]:
        return {name: self.model_of(self.registry.get(name)) for name in self.registry.names()}

    def _tag_error(self, message: str, value: Any) -> ValidationError:
        error = PydanticCustomError("registry_tag", message)
        return ValidationError.from_exception_data(
            self.registry.what, [InitErrorDetails(type=error, loc=(self.tag,), input=value)]
        )

    def validate(self, value: Any, info: core_schema.ValidationInfo) -> BaseModel:
        if isinstance(value, BaseModel):
            name = getattr(value, self.tag, None)
            if isinstance(name, str) and name in self.registry \
                    and isinstance(value, self.model_of(self.registry.get(name))):
                return value
        if not isinstance(value, dict):
            raise PydanticCustomError("model_type", "Input should be a mapping")
        name = value.get(self.tag, self.default)
        known = ", ".join(self.registry.names())
        if name is None:
            raise self._tag_error(f"`{self.tag}` is required (one of {known})", value)
        if not isinstance(name, str) or name not in self.registry:
            raise self._tag_error(f"unknown {self.registry.what} {name!r} (known: {known})", name)
        # A ValidationError raised here keeps its locations: pydantic prefixes them with this value's path.
        return self.model_of(self.registry.get(name)).model_validate(value, context=info.context)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.with_info_plain_validator_function(self.validate)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        choices: dict[Any, CoreSchema] = {
            name: model.__pydantic_core_schema__ for name, model in self.models().items()
        }
        return handler(core_schema.tagged_union_schema(choices, discriminator=self.tag))
