"""What a refusal of the service says, read for the user: its fields, the files it names, notes."""

from __future__ import annotations

from typing import Any

import pydantic

from gazer.cli.arguments import EXPLAIN_ARGUMENTS
from gazer.errors import ApiError, BadAnswer, refusal_by_model, shortened


VALID_SHOWN = 20  # of a refusal's valid values (a model's layers can be hundreds)


def files_at_fault(error: ApiError) -> dict[int, tuple[int, str]]:
    """The request's files that a refusal names as its fields (`file.N`), whatever its status (an
    unreadable file is a 422, one of too many pixels a 413), each with its own status (the
    answer's, where it gives none) and what is said of it."""
    found = {}
    for item in field_errors(error):
        field, status = item.get("field"), item.get("status")
        if isinstance(field, str) and field.startswith("file.") and field[len("file."):].isdigit():
            own = status if isinstance(status, int) and not isinstance(status, bool) else error.status
            found[int(field[len("file."):])] = (own, str(item.get("message", error.detail)))
    return found


def about_the_image(error: ApiError) -> bool:
    """Whether the refusal of a one-image request is about its image: the service names the file in
    the detail (`file 0 ('a.jpg'): ...`) or as the field in error (`file.0`)."""
    return error.detail.startswith("file 0") or 0 in files_at_fault(error)


def naming_the_file(detail: str, sent_name: str, given: str, index: int = 0) -> str:
    """A refusal's detail with its file named as it was given, not as the request's `index`th
    (`file 0 ('a.jpg')`, which the service writes whichever image of the command it was)."""
    for named in (f"file {index} ({sent_name[:100]!r})", f"file {index} ({sent_name})", f"file {index}"):
        if detail.startswith(named):
            return given + detail[len(named):]
    return detail


def field_errors(error: ApiError) -> list[dict[str, Any]]:
    """A refusal's `errors`, those that are objects (what the service sends; a proxy's may be anything)."""
    errors = error.extras.get("errors")
    return [found for found in errors if isinstance(found, dict)] if isinstance(errors, list) else []


def refused_fields(error: ApiError) -> set[str]:
    """The fields a refusal names in its `errors`."""
    return {str(found.get("field")) for found in field_errors(error)}


def problem_notes(error: ApiError) -> list[str]:
    """What a refusal adds to its detail: how to give a key, each field's error, the values taken."""
    notes = ["  give this command the key with --api-key KEY or GAZER_API_KEY"] if error.status == 401 else []
    errors = error.extras.get("errors")
    for field_error in errors if isinstance(errors, list) else [] if errors is None else [errors]:
        if not isinstance(field_error, dict):
            notes.append(f"  {field_error}")
        elif str(field_error.get("message")) not in error.detail:  # said once is enough
            notes.append(f"  {field_error.get('field')}: {field_error.get('message')}")
    valid = error.extras.get("valid") or []
    valid = valid if isinstance(valid, list) else [valid]
    if "file" in valid:  # explain's fields, refusing an unknown one: --option may name only a method's
        valid = [name for name in valid if name not in EXPLAIN_ARGUMENTS]
    if valid:
        more = f", ... ({len(valid) - VALID_SHOWN} more)" if len(valid) > VALID_SHOWN else ""
        notes.append(f"  valid: {', '.join(map(str, valid[:VALID_SHOWN]))}{more}")
    return notes


def unexpected(error: Exception) -> str:
    """What was wrong with an answer, on one line and short: a refusal by a wire model names its first field."""
    if isinstance(error, BadAnswer):
        return error.detail
    if isinstance(error, pydantic.ValidationError):
        return refusal_by_model(error)
    return shortened(f"{type(error).__name__}: {error}")
