"""A class named by its index or by its label, as `--target` and `target=` take it."""

from __future__ import annotations

import numbers
from typing import Sequence

from gazer.errors import GazerError


class UnknownClass(GazerError, ValueError):
    """No class of the model, or several, bear the name given; `candidates` are the indexes of
    those that hold it."""

    def __init__(self, message: str, candidates: list[int]) -> None:
        super().__init__(message)
        self.candidates = candidates


def as_index(given: int | str) -> int | None:
    """`given` as a class index, where it is one (a number, or a string of digits), without a lookup."""
    if isinstance(given, numbers.Integral):  # numpy's too
        return int(given)
    digits = given.strip()
    return int(digits) if digits.isascii() and digits.isdigit() else None


def class_index(model: str, labels: Sequence[str], given: int | str) -> int:
    """`given` as an index (a number, or a string of digits), else, in any case, the one label
    equal to it, else the one with a comma-separated name equal to it ("tiger" is "tiger, Panthera
    tigris"), else the one label holding it. UnknownClass names the candidates when there are none
    or several."""
    index = as_index(given)
    if index is not None:
        return index
    wanted = given.strip().lower()
    equal = [index for index, label in enumerate(labels) if label.lower() == wanted]
    holding = [index for index, label in enumerate(labels) if wanted in label.lower()]
    named_so = [index for index, label in enumerate(labels)
                if wanted in (name.strip() for name in label.lower().split(","))]
    found = equal or named_so or holding
    if len(found) == 1:
        return found[0]
    if not found:
        raise UnknownClass(f"no class of {model} is named {given!r}", [])
    # a label may hold commas ("bullfrog, Rana catesbeiana"): each one quoted, after its index
    named = "; ".join(f"{index} {labels[index]!r}" for index in found[:8]) + ("; ..." if len(found) > 8 else "")
    raise UnknownClass(f"{len(found)} classes of {model} hold {given!r}: {named}; give the index", found)
