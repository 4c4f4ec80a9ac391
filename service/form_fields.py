"""Multipart form fields: those whose value is a list (the field repeated, or a comma list in one
value), and the refusal of a field that a route does not declare."""

from __future__ import annotations

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
    """Refuses the first undeclared field: "not one `takers` takes`note`". The form is the one
    FastAPI has read already."""
    declared = _declared(request.scope["route"])
    unknown = sorted(set((await request.form()).keys()) - declared)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}: not one {takers} takes{note}", field=unknown[0],
                             valid=sorted(declared))


def _declared(route: APIRoute) -> frozenset[str]:
    """The form fields `route` declares, its dependencies' included."""
    names, pending = set(), [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(param.alias for param in dependant.body_params)
        pending.extend(dependant.dependencies)
    return frozenset(names)
