"""Wire models generated from the core's parameter dataclasses (core.params), so a name, a
default or a bound is written once."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from core.params import bounds, doc, field_types


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN or inf: "a finite number", not a bound


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
            # `float | Literal["auto"]`: the bounds are the number's
            annotation = Union[tuple(Annotated[member, Field(**limits)] if member in (int, float) else member
                                     for member in typing.get_args(annotation))]
            limits = {}
        fields[field.name] = (annotation, Field(**default, description=doc(field) or None, **limits))
    generated_doc = (config.__doc__ or "").startswith(config.__name__ + "(")  # dataclasses write one
    return create_model(name, __base__=base, __doc__=None if generated_doc else config.__doc__, **fields)
