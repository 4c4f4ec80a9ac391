"""The explain form's method options, generated from each method's `Options`: a method that
gains an option gains a form field, described in the OpenAPI document, with no edit here."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Annotated, Any, Optional

from fastapi import Form, Request

from core.explain import METHODS
from core.params import bounds, describe_bounds, doc, field_types
from service.form_fields import check_fields


def _takers() -> dict[str, list[tuple[str, dataclasses.Field, Any]]]:
    """Option name -> [(method, field, type)] over every method."""
    takers: dict[str, list[tuple[str, dataclasses.Field, Any]]] = {}
    for name, method in METHODS.items():
        annotations = field_types(method.Options)
        for field in dataclasses.fields(method.Options):
            takers.setdefault(field.name, []).append((name, field, annotations[field.name]))
    return takers


def _describe(method: str, field: dataclasses.Field) -> str:
    limits = bounds(field)
    ranged = f"; {describe_bounds(limits)}" if limits else ""
    return f"{method}: {doc(field)} (default {field.default}{ranged})"


def methods_description() -> str:
    """The `method` field's description: every method with the options it takes."""
    listed = []
    for name, method in METHODS.items():
        options = method.option_names
        listed.append(f"{name} ({', '.join(options)})" if options else name)
    return ("one of: " + "; ".join(listed) + ". Default gradcam, or occlusion for a model served from ONNX "
            "alone. Options a method does not take are refused (422).")


def _envelope(fields: list[dataclasses.Field]) -> dict[str, float]:
    """Bounds that admit every method's range for a shared option (each method still checks
    its own): a bound kind that every taker has, at its loosest."""
    loosest = {"ge": min, "gt": min, "le": max, "lt": max, "min_length": min, "max_length": max}
    limits = [bounds(field) for field in fields]
    return {kind: pick(limit[kind] for limit in limits) for kind, pick in loosest.items()
            if all(kind in limit for limit in limits)}


def _parameters() -> list[inspect.Parameter]:
    parameters = []
    for option, takers in _takers().items():
        annotation = takers[0][2]
        description = "; ".join(_describe(method, field) for method, field, _ in takers)
        finite = {"allow_inf_nan": False} if annotation is float else {}  # NaN: "a finite number", not a bound
        form = Form(description=description, **finite, **_envelope([field for _, field, _ in takers]))
        parameters.append(inspect.Parameter(option, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[Optional[annotation], form]))
    return parameters


async def method_options(request: Request, **given: Any) -> dict[str, Any]:
    """A dependency: the options the client sent (for core.pipeline.explain to check). A form
    field that the route does not declare is refused, not dropped: FastAPI would drop a
    misspelled option (`step`), and the method would run at its default."""
    await check_fields(request, "this route or any method", " (a method refuses the others' options by name)")
    return {name: value for name, value in given.items() if value is not None}


method_options.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request), *_parameters()])
