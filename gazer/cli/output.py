"""How the CLI prints: what a server sent, shown without its control characters; tables;
pictures to files or standard output."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from pydantic import BaseModel


# C0, DEL and C1 control characters. In what a server sent (a label, a problem's detail) they could
# move the cursor, clear the screen or retitle the window; they are printed written out (\x1b).
VISIBLE = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7f, 0xa0))}
# JSON has C0 escaped already (its line breaks are the layout); DEL and C1 as JSON's own escapes.
VISIBLE_IN_JSON = {code: f"\\u{code:04x}" for code in range(0x7f, 0xa0)}


def shown(text: object) -> str:
    """`text` with its control characters written out, so that printing it moves and sets nothing."""
    return str(text).translate(VISIBLE)


def say(*lines: object, file: TextIO | None = None, flush: bool = False) -> None:
    """Each of `lines` as a line of its own, shown: how the CLI prints, since most of it quotes the server."""
    for line in lines:
        print(shown(line), file=file, flush=flush)


def say_json(answer: BaseModel) -> None:
    print(answer.model_dump_json(indent=2).translate(VISIBLE_IN_JSON))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Lines of columns padded to their widest cell; numbers right-aligned."""
    cells = [[shown(value) for value in row] for row in rows]
    widths = [max([len(header)] + [len(row[column]) for row in cells]) for column, header in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(row[column], (int, float)) for row in rows)
               for column in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.rjust(width) if right else value.ljust(width)
                         for value, width, right in zip(values, widths, numeric)).rstrip()

    return [line(headers)] + [line(row) for row in cells]


def class_name(index: int, label: str) -> str:
    """`281 tabby`; a model without labels names its classes by their index: `2`, once."""
    return str(index) if label == str(index) else f"{index} {label}"


STDOUT = "-"  # as -o: standard output


def write_picture(output: Path, picture: bytes) -> None:
    """`picture` into the file `output` names (its folder made now, once there is a picture to
    put there), or to standard output for -o -."""
    if str(output) == STDOUT:
        sys.stdout.buffer.write(picture)
        sys.stdout.flush()
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(picture)


def telling(to_stdout: bool) -> Callable[..., None]:
    """`say` where what is said of a picture goes: standard error when the picture is the output."""
    return partial(say, file=sys.stderr if to_stdout else sys.stdout)
