"""Wire models generated from the core's parameter dataclasses (core.params), so a name, a
default or a bound is written once."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from core.params import bounds, doc, field_types


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN or inf: "a finite number", not a bound


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("bool_for_number", "Input should be a number, not true or false")
    return value


NOT_A_BOOLEAN = BeforeValidator(_not_a_boolean)


def numbers_not_booleans(annotation: Any) -> Any:
    """`annotation` with each int and float in it refusing true and false, which pydantic reads as
    1 and 0 (`"lr": true` trained at 1.0); a union with bool still takes them as booleans."""
    if annotation in (int, float):
        return Annotated[annotation, NOT_A_BOOLEAN]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated and args[0] in (int, float):  # after its bounds, which stay the number's own
        return Annotated[(args[0], *annotation.__metadata__, NOT_A_BOOLEAN)]
    if origin is Annotated:
        return Annotated[(numbers_not_booleans(args[0]), *annotation.__metadata__)]
    if origin in (Union, types.UnionType):
        return Union[tuple(numbers_not_booleans(member) for member in args)]
    if origin in (tuple, list) and args:
        return origin[tuple(numbers_not_booleans(member) if member is not Ellipsis else member for member in args)]
    return annotation


def wire_model(config: type, name: str, base: type[BaseModel] = Strict,
               overrides: dict[str, type] | None = None) -> type[BaseModel]:
    """A pydantic model with the dataclass's fields, defaults, bounds and descriptions; nested
    dataclasses become nested models. `overrides` replaces the type of some fields."""
    overrides = overrides or {}
    annotations = field_types(config)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        annotation = overrides.get(field.name, annotations[field.name])
        if annotation is annotations[field.name] and dataclasses.is_dataclass(annotation):
            annotation = wire_model(annotation, annotation.__name__ + "Spec", base)
        if field.default is not dataclasses.MISSING:
            default: dict[str, Any] = {"default": field.default}
        elif field.default_factory is not dataclasses.MISSING:
            factory = field.default_factory
            default = {"default_factory": (lambda model=annotation: model()) if isinstance(annotation, type)
                       and issubclass(annotation, BaseModel) else factory}
        else:
            default = {}
        limits = bounds(field)
        if limits and typing.get_origin(annotation) in (Union, types.UnionType):
            # `float | Literal["auto"]`: the bounds are the number's; `str | None`: the string's
            annotation = Union[tuple(Annotated[member, Field(**limits)] if member in (int, float, str) else member
                                     for member in typing.get_args(annotation))]
            limits = {}
        fields[field.name] = (numbers_not_booleans(annotation), Field(**default, description=doc(field) or None,
                                                                      **limits))
    generated_doc = (config.__doc__ or "").startswith(config.__name__ + "(")  # dataclasses write one
    return create_model(name, __base__=base, __doc__=None if generated_doc else config.__doc__, **fields)
