"""What the command line gives, read: KEY=VALUE options, the fine-tune flags that follow the wire
model, three numbers, a class by index or label."""

from __future__ import annotations

import argparse
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Sequence

from gazer.classes import UnknownClass
from gazer.client import Client
from schemas.jobs import FineTuneRequest


# FineTuneRequest fields that get their own, shorter, required flags.
FINE_TUNE_REQUIRED = {"dataset_id": "--dataset", "output_model": "--output"}


def parse_value(text: str) -> Any:
    """A command-line value as JSON where it is JSON (3, 0.5, true, [1, 2]), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def key_values(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    """`a=1`, `head.hidden=64` -> nested dicts."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"gazer: {flag} takes KEY=VALUE, not {pair!r}")
        *parents, leaf = key.split(".")
        node = values
        for depth, parent in enumerate(parents, 1):
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise SystemExit(f"gazer: {flag} {pair!r}: {'.'.join(parents[:depth])} was given a value of its own")
        if isinstance(node.get(leaf), dict):
            raise SystemExit(f"gazer: {flag} {pair!r}: {key} has fields set on their own ({key}.NAME=VALUE)")
        node[leaf] = parse_value(text)
    return values


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in extra.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) \
            else value
    return result


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _first_that_parses(parsers: list[Callable[[str], Any]], kinds: list) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        for parser, (_, choices) in zip(parsers, kinds):
            try:
                value = parser(text)
            except (ValueError, argparse.ArgumentTypeError):
                continue
            if choices is None or value in choices:
                return value
        raise argparse.ArgumentTypeError(f"not a value this flag takes: {text!r}")
    return parse


def flag_type(annotation: Any) -> tuple[Callable[[str], Any], tuple | None] | None:
    """(parser, choices) for a scalar field type; None for nested models (set with --set)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:  # a bounded number: the server checks the bounds
        return flag_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(options) == 1:
            return flag_type(options[0])
        kinds = [flag_type(option) for option in options]
        if all(kind is not None for kind in kinds):  # such as a number or "auto"
            return _first_that_parses([parse for parse, _ in kinds], kinds), None
        return None
    if origin is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices
    if annotation is bool:
        return _boolean, None
    if annotation in (int, float, str):
        return annotation, None
    return None


def add_fine_tune_flags(parser: argparse.ArgumentParser) -> list[str]:
    """A flag for each scalar field of FineTuneRequest, so the flags follow the wire model;
    returns their names. Unset flags are not sent: the server's defaults apply."""
    for name, flag in FINE_TUNE_REQUIRED.items():
        parser.add_argument(flag, dest=name, required=True, metavar=flag.lstrip("-").upper(),
                            help=FineTuneRequest.model_fields[name].description)
    names = []
    for name, field in FineTuneRequest.model_fields.items():
        kind = flag_type(field.annotation)
        if name in FINE_TUNE_REQUIRED or kind is None:
            continue
        parse, choices = kind
        described = (field.description or "").replace("%", "%%")
        shown = f"{described} (default {field.default})".lstrip() if field.default is not None else described
        if parse is _boolean:  # --bfloat16 / --no-bfloat16
            parser.add_argument("--" + name.replace("_", "-"), dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=shown)
        else:
            parser.add_argument("--" + name.replace("_", "-"), dest=name, type=parse, choices=choices, default=None,
                                help=shown)
        names.append(name)
    return names


def refuse_folders(images: Sequence[Path]) -> None:
    """A usage error for a folder among the images, which would otherwise be read as a file."""
    folder = next((image for image in images if image.is_dir()), None)
    if folder is not None:
        raise SystemExit(f"gazer: {folder} is a folder; name its images ({folder / '*.jpg'})")


# Client.explain's own arguments, and the API's field of the images: what --option may not name
EXPLAIN_ARGUMENTS = set(inspect.signature(Client.explain).parameters) - {"self", "options"} | {"overlay_format", "file"}


def method_options(pairs: Sequence[str]) -> dict[str, Any]:
    """--option KEY=VALUE: a method's own options (steps=32, baseline=blur, ...), not explain's flags."""
    options = key_values(pairs, "--option")
    taken = sorted(set(options) & EXPLAIN_ARGUMENTS)
    if taken:
        raise SystemExit(f"gazer: --option {taken[0]}=...: --option is for a method's own options (steps=32, "
                         f"baseline=blur, ...); {taken[0]} is not one of them (see gazer explain --help)")
    return options


def class_index(client: Client, model: str, given: str) -> int:
    """A class named by its index, or by its label (Client.class_index); a usage error names the
    candidates when several hold it."""
    try:
        return client.class_index(model, given)
    except UnknownClass as unknown:
        hint = "" if unknown.candidates else f" (see gazer models labels {model} TEXT)"
        raise SystemExit(f"gazer: {unknown}{hint}") from None


class ThreeNumbers(argparse.Action):
    """Three numbers, as three arguments or as one comma list (as the API takes them)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parts = [part for value in values for part in value.split(",") if part.strip()]
        try:
            numbers = [float(part) for part in parts]
        except ValueError:
            numbers = []
        if len(numbers) != 3:
            parser.error(f"argument {option_string}: three numbers, as 0.5 0.5 0.5 or 0.5,0.5,0.5; got "
                         f"{' '.join(values)}")
        setattr(namespace, self.dest, numbers)
