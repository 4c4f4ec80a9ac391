"""Parameters declared once: a dataclass field carries its default, bounds and description.

Job configs and explanation-method options are frozen dataclasses whose fields are made with
`param(...)`. The wire models in `schemas/` are generated from them, and `from_params` /
`check_params` build and check them here, so a name, a default or a bound lives in one place.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union

from core.errors import InvalidRequest

Config = TypeVar("Config")
BOUNDS = ("ge", "gt", "le", "lt", "min_length", "max_length")


def param(default: Any = dataclasses.MISSING, *, doc: str = "", factory: Any = dataclasses.MISSING,
          **bounds: float) -> Any:
    """A dataclass field with a description and bounds (`ge`, `gt`, `le`, `lt` for numbers,
    `min_length`, `max_length` for sequences)."""
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"unknown bounds {sorted(unknown)}")
    return dataclasses.field(default=default, default_factory=factory, metadata={"doc": doc, "bounds": bounds})


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def doc(field: dataclasses.Field) -> str:
    return field.metadata.get("doc", "")


def bounds(field: dataclasses.Field) -> dict[str, float]:
    return dict(field.metadata.get("bounds", {}))


def field_bounds(cls: type, name: str) -> dict[str, float]:
    """The bounds of one field of a params dataclass, by name."""
    return bounds(next(field for field in dataclasses.fields(cls) if field.name == name))


def choices(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a `Literal[...]` annotation (also inside `X | None`), else None."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        for member in typing.get_args(annotation):
            if typing.get_origin(member) is Literal:
                return typing.get_args(member)
    return None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def takes_numbers(annotation: Any) -> bool:
    """Whether a field's annotation admits plain numbers (`float | Literal["auto"]`, say)."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) \
        else (annotation,)
    return any(member in (int, float) for member in members)


def _nested_dataclass(annotation: Any) -> type | None:
    return annotation if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) else None


def from_params(cls: type[Config], params: dict[str, Any]) -> Config:
    """Build a config from plain JSON data (nested dicts become nested dataclasses, lists
    become tuples where the field is a tuple). Unknown names are refused."""
    names = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise InvalidRequest(f"unknown parameter {unknown[0]!r}", field=unknown[0], valid=sorted(names))
    annotations = field_types(cls)
    values = {}
    for name, value in params.items():
        nested = _nested_dataclass(annotations[name])
        if nested is not None and isinstance(value, dict):
            value = from_params(nested, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def check_params(config: Any, prefix: str = "") -> None:
    """Raise InvalidRequest naming the first field outside its bounds or choices."""
    annotations = field_types(type(config))
    for field in dataclasses.fields(config):
        value, name = getattr(config, field.name), prefix + field.name
        if _nested_dataclass(annotations[field.name]) is not None:
            check_params(value, name + ".")
            continue
        allowed = choices(annotations[field.name])
        if allowed is not None and value is not None and value not in allowed \
                and not (takes_numbers(annotations[field.name]) and is_number(value)):
            raise InvalidRequest(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}",
                                 field=name, valid=list(allowed))
        if value is None or (allowed is not None and value in allowed and not is_number(value)):
            continue  # a word a number field also takes ("auto") has no bounds
        limits = bounds(field)
        size = len(value) if isinstance(value, (tuple, list, str)) else None
        for bound, limit in limits.items():
            if bound in ("min_length", "max_length"):
                ok = size is None or (size >= limit if bound == "min_length" else size <= limit)
            else:
                ok = {"ge": value >= limit, "gt": value > limit, "le": value <= limit, "lt": value < limit}[bound]
            if not ok:
                raise InvalidRequest(f"{name} must be {describe_bounds(limits)}; got {value!r}", field=name)


def describe_bounds(limits: dict[str, float]) -> str:
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "length >=", "max_length": "length <="}
    return " and ".join(f"{words[bound]} {limit if isinstance(limit, int) else f'{limit:g}'}"
                        for bound, limit in limits.items())
