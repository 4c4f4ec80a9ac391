"""Form fields whose value is a list: the field repeated, or a comma list in one value."""

from __future__ import annotations

from pydantic import BeforeValidator

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
