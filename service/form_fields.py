"""Multipart form fields: those whose value is a list (the field repeated, or a comma list in one
value), and the refusal of a field that a route does not declare, of one value sent twice, or of
a query parameter."""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Union, get_args, get_origin

from fastapi import Request
from fastapi.routing import APIRoute
from pydantic import BeforeValidator

from core.errors import InvalidRequest

MAX_LIST_PARTS = 1024  # of one comma-listed form field: its parsing stays cheap whatever the part's size


def _comma_separated(values: object) -> object:
    """A repeated form field's values, each of which may be a comma list: `target=281,130` is
    `target=281&target=130`; empty parts are dropped."""
    if not isinstance(values, list):
        return values
    parts = [part.strip() for value in values if isinstance(value, str) for part in value.split(",")]
    if len(parts) > MAX_LIST_PARTS:
        raise ValueError(f"at most {MAX_LIST_PARTS} values")
    # anything else (a file part, say) is left for the field's own type to refuse
    return [part for part in parts if part != ""] + [value for value in values if not isinstance(value, str)]


CommaList = BeforeValidator(_comma_separated)


async def refuse_unknown_fields(request: Request) -> None:
    """A dependency of the multipart routes: a form field that the route does not declare is refused,
    not dropped as FastAPI would drop it: a misspelled `topk` would run at the default."""
    await check_fields(request)


async def check_fields(request: Request, takers: str = "this route", note: str = "") -> None:
    """Refuses the first undeclared field ("not one `takers` takes`note`"), and a field of one
    value sent more than once, of which FastAPI would keep the last alone; and a query parameter,
    which these routes do not read (`?method=...` ran the default method). The form is the one
    FastAPI has read already."""
    route = request.scope["route"]
    queried = sorted(set(request.query_params) - {param.alias for param in route.dependant.query_params})
    if queried:
        raise InvalidRequest(f"query parameter {queried[0]!r}: {takers} reads its fields from the form "
                             f"(multipart/form-data), not from the URL", field=queried[0])
    declared = _declared(route)
    form = await request.form()
    unknown = sorted(set(form.keys()) - set(declared))
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}: not one {takers} takes{note}", field=unknown[0],
                             valid=sorted(declared))
    repeated = sorted(name for name in set(form.keys()) if not declared[name] and len(form.getlist(name)) > 1)
    if repeated:
        raise InvalidRequest(f"field {repeated[0]!r} was sent {len(form.getlist(repeated[0]))} times; it takes one "
                             f"value", field=repeated[0])


def _declared(route: APIRoute) -> dict[str, bool]:
    """The form fields `route` declares, its dependencies' included: whether each takes a list."""
    fields, pending = {}, [route.dependant]
    while pending:
        dependant = pending.pop()
        fields.update((param.alias, _takes_many(param.field_info.annotation)) for param in dependant.body_params)
        pending.extend(dependant.dependencies)
    return fields


def _takes_many(annotation: object) -> bool:
    """Whether a field of this type takes a list (the field repeated), through Optional and Annotated."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _takes_many(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return any(_takes_many(member) for member in get_args(annotation))
    return origin in (list, tuple, set, frozenset)
