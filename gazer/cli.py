"""`gazer`: the API from a shell. `gazer --help`, `gazer COMMAND --help`."""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import io
import json
import os
import secrets
import sys
import time
import types
import typing
from collections import Counter
from contextlib import ExitStack
from functools import partial
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Callable, Literal, Sequence, TextIO

import httpx
import pydantic
from pydantic import BaseModel
from tqdm import tqdm

from gazer import grid
from gazer.calls import DEFAULT_MODEL, RECONNECT_SECONDS
from gazer.classes import UnknownClass, as_index
from gazer.client import DEFAULT_URL, Client, default_url
from gazer.errors import ApiError, BadAnswer, EmptyName, EndedEarly, NoAnswer, refusal_by_model, shortened
from schemas.api_keys import SCOPES, create_key, read_key_file, revoke_key
from schemas.problems import TITLES
from schemas.jobs import FineTuneRequest, Job

INTERRUPTED = 130  # what a shell reports for a command stopped by SIGINT
VALID_SHOWN = 20  # of a refusal's valid values (a model's layers can be hundreds)
# FineTuneRequest fields that get their own, shorter, required flags.
FINE_TUNE_REQUIRED = {"dataset_id": "--dataset", "output_model": "--output"}


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


# ---------------------------------------------------------------- commands


def refuse_folders(images: Sequence[Path]) -> None:
    """A usage error for a folder among the images, which would otherwise be read as a file."""
    folder = next((image for image in images if image.is_dir()), None)
    if folder is not None:
        raise SystemExit(f"gazer: {folder} is a folder; name its images ({folder / '*.jpg'})")


def cmd_predict(client: Client, args: argparse.Namespace) -> int:
    images = [Path(image) for image in args.images]
    refuse_folders(images)
    names = [image.name for image in images]
    shown = names if len(set(names)) == len(names) else [str(image) for image in images]  # a/0.jpg, b/0.jpg
    if args.json:  # one answer, as the API gives it: all of them or a refusal
        say_json(client.predict(images, args.model, args.top_k, args.resize))
        return 0
    pending, failed, answer = list(range(len(images))), [], None
    while pending:  # the images the service refuses are named, and the others are predicted without them
        try:
            answer = client.predict([images[index] for index in pending], args.model, args.top_k, args.resize)
            break
        except ApiError as refused:
            at_fault = files_at_fault(refused)
            if not at_fault or max(at_fault) >= len(pending):  # the request itself (the model, the key)
                raise
            for at, (status, detail) in sorted(at_fault.items()):
                index = pending[at]
                title = refused.title if status == refused.status else TITLES.get(status, "Error")
                given = args.images[index]  # named as given, as explain names them
                say(f"gazer: {status} {title}: {naming_the_file(detail, images[index].name, given, at)}",
                    file=sys.stderr)
                failed.append(given)
            pending = [index for at, index in enumerate(pending) if at not in at_fault]
    if answer is not None:
        rows = [(shown[index], rank, p.index, p.label, f"{p.probability:.4f}")
                for index, result in zip(pending, answer.results)
                for rank, p in enumerate(result.predictions, start=1)]
        say(f"model {answer.model.id}@{answer.model.version}")
        say(*table(("image", "rank", "class", "label", "probability"), rows))
    if failed:
        say(f"gazer: {len(failed)} of {len(images)} images not predicted: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# the overlay's format, from the name it is written to; and the name's ending for a format
OVERLAY_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
OVERLAY_ENDINGS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
# Client.explain's own arguments, and the API's field of the images: what --option may not name
EXPLAIN_ARGUMENTS = set(inspect.signature(Client.explain).parameters) - {"self", "options"} | {"overlay_format", "file"}


STDOUT = "-"  # as -o: standard output


def picture_format(path: Path, chosen: str | None = None) -> str:
    """`chosen`, else the format `path`'s ending names (PNG without one); a usage error for an
    ending that names another format (.gif was written as PNG)."""
    named = OVERLAY_SUFFIXES.get(path.suffix.lower())
    if chosen is not None and named is not None and named != chosen and str(path) != STDOUT:
        raise SystemExit(f"gazer: {path} names a {named.upper()} file and --format says {chosen}: "
                         f"end it in {OVERLAY_ENDINGS[chosen]}, or leave --format out")
    if chosen is not None:
        return chosen
    if path.suffix and path.suffix.lower() not in OVERLAY_SUFFIXES:
        raise SystemExit(f"gazer: {path} names no picture format written here: end it in .png, .jpg or .webp "
                         f"(or give --format)")
    return OVERLAY_SUFFIXES.get(path.suffix.lower(), "png")


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


def method_options(pairs: Sequence[str]) -> dict[str, Any]:
    """--option KEY=VALUE: a method's own options (steps=32, baseline=blur, ...), not explain's flags."""
    options = key_values(pairs, "--option")
    taken = sorted(set(options) & EXPLAIN_ARGUMENTS)
    if taken:
        raise SystemExit(f"gazer: --option {taken[0]}=...: --option is for a method's own options (steps=32, "
                         f"baseline=blur, ...); {taken[0]} is not one of them (see gazer explain --help)")
    return options


def cmd_explain(client: Client, args: argparse.Namespace) -> int:
    """One image: its overlay to the file -o names. Several: -o (and --heatmap) name folders,
    each image's pictures named after it."""
    images = [Path(image) for image in args.images]
    refuse_folders(images)
    options = method_options(args.option)
    if len(images) == 1:
        ending = OVERLAY_ENDINGS[args.format or "png"]
        output = Path(STDOUT) if args.output == STDOUT else picture_in(args.output, images[0], ending)
        heatmap = picture_in(args.heatmap, images[0], ".png") if args.heatmap else None
        refuse_one_path_for_both(output, heatmap)
        if args.target is not None:
            args.target = class_index(client, args.model, args.target)
        explain_one(client, args, options, images[0], images[0].read_bytes(), output, heatmap)
        return 0
    if args.output == STDOUT:
        raise SystemExit("gazer: -o - writes one image's overlay to standard output; with several images, "
                         "-o names a folder")
    stems = [image.stem for image in images]
    clash = next((stem for stem in stems if stems.count(stem) > 1), None)
    if clash is not None:
        raise SystemExit(f"gazer: two images are named {clash!r}, and with several images each overlay is named "
                         f"after its image; rename one")
    folders = [Path(args.output)] + ([Path(args.heatmap)] if args.heatmap else [])
    for flag, folder in zip(("-o", "--heatmap"), folders):
        if folder.exists() and not folder.is_dir():
            raise SystemExit(f"gazer: {folder} is a file; with several images, -o and --heatmap name folders")
        if not folder.exists() and folder.suffix.lower() in OVERLAY_SUFFIXES:
            raise SystemExit(f"gazer: {flag} {folder} names a picture, but with several images {flag} names a "
                             f"folder, each picture named after its image; give a folder ({flag} "
                             f"{folder.with_suffix('')}/), or one image")
    ending = OVERLAY_ENDINGS[args.format or "png"]
    outputs = [(folders[0] / f"{image.stem}{ending}", folders[1] / f"{image.stem}.png" if args.heatmap else None)
               for image in images]
    for output, heatmap in outputs:
        refuse_one_path_for_both(output, heatmap)
    if args.target is not None:
        args.target = class_index(client, args.model, args.target)
    failed = [given for given, (output, heatmap) in zip(args.images, outputs)
              if not explained(client, args, options, given, output, heatmap)]
    if failed:
        say(f"gazer: {len(failed)} of {len(images)} images not explained: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def refuse_one_path_for_both(output: Path, heatmap: Path | None) -> None:
    """A usage error where the overlay and the heatmap would be written to the same place: the
    heatmap would replace the overlay, or both would go to standard output, one after the other."""
    if heatmap is None:
        return
    if str(output) == STDOUT and str(heatmap) == STDOUT:
        raise SystemExit("gazer: -o - and --heatmap - both name standard output, which takes one picture; "
                         "write one of them to a file")
    if STDOUT not in (str(output), str(heatmap)) and output.resolve() == heatmap.resolve():
        raise SystemExit(f"gazer: -o and --heatmap would both write {output}; give them different names "
                         f"or folders")


def picture_in(given: str, image: Path, ending: str) -> Path:
    """Where one image's picture goes: in the folder `given` names (one that exists, or a name ending
    in a slash: made when the picture is written), named after the image, as with several images;
    else `given` itself."""
    path = Path(given)
    if given.endswith(("/", os.sep)) or path.is_dir():
        return path / f"{image.stem}{ending}"
    return path


def explained(client: Client, args: argparse.Namespace, options: dict[str, Any], given: str, output: Path,
              heatmap: Path | None) -> bool:
    """One of several images explained; or False, its failure said naming it as it was `given`, so that
    the others are still explained. A refusal of the request as a whole (the model, the method, the key)
    would refuse every image: it ends the command."""
    image = Path(given)
    try:
        blob = image.read_bytes()
    except OSError as error:
        say(f"gazer: {given}: {error.strerror or error}", file=sys.stderr)
        return False
    try:
        explain_one(client, args, options, image, blob, output, heatmap)
    except ApiError as error:
        if not about_the_image(error):
            raise
        say(f"gazer: {error.status} {error.title}: {naming_the_file(error.detail, image.name, given)}",
            file=sys.stderr)
        return False
    return True


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


def explain_one(client: Client, args: argparse.Namespace, options: dict[str, Any], image: Path, blob: bytes,
                output: Path, heatmap: Path | None) -> None:
    outputs = ["overlay"] + (["heatmap"] if heatmap else [])
    if sys.stderr.isatty():  # Score-CAM or IG on a large model takes a while: say what is running
        say(f"explaining {image} ({args.method or 'the default method'} on {args.model})...", file=sys.stderr,
            flush=True)
    answer = client.explain((image.name, blob), args.model, args.method, args.target, args.layer,
                            resize=args.resize, outputs=outputs, faithfulness=args.faithfulness or None,
                            overlay_format=picture_format(output, args.format), **options)
    explanation = answer.results[0].explanation
    to_stdout = str(output) == STDOUT
    write_picture(output, explanation.overlay_image or b"")
    if heatmap:
        write_picture(heatmap, explanation.heatmap or b"")
    tell = telling(to_stdout)
    target = explanation.target
    named = f"{image.name}: " if len(args.images) > 1 else ""
    tell(f"{named}{explanation.method}: class {class_name(target.index, target.label)} (p={target.probability:.4f}), "
         f"layer {explanation.layer or '-'}, {explanation.timings_ms.get('model', 0):.0f} ms -> "
         f"{'standard output' if to_stdout else output}")
    if explanation.faithfulness is not None:
        scores = explanation.faithfulness
        tell(f"faithfulness: deletion {scores.deletion:.3f} (lower is better), insertion {scores.insertion:.3f} "
             f"(higher is better), {scores.steps} steps")
    if explanation.flat and explanation.gate is None:
        tell("the map is flat (all zeros): this method found nothing to point at for this class at this layer; "
             "try another layer or method")
    if explanation.gate is not None:
        gate = explanation.gate
        tell(f"gate {gate.min:.3f}..{gate.max:.3f} (mean {gate.mean:.3f})"
             + (": flat, so the map is all zeros" if gate.flat else ""))


def cmd_compare(client: Client, args: argparse.Namespace) -> int:
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    if not methods:
        raise SystemExit("gazer: --methods names at least one method")
    image = Path(args.image)
    refuse_folders([image])
    options = method_options(args.option)
    output = Path(STDOUT) if args.output == STDOUT else \
        picture_in(args.output, image, OVERLAY_ENDINGS[args.format or "png"])
    chosen = picture_format(output, args.format)
    detail = client.model(args.model)
    offered = detail.methods
    unknown = [method for method in methods if method not in offered]
    if unknown:
        raise SystemExit(f"gazer: {args.model} offers no method {unknown[0]!r}; it offers {', '.join(offered)}")
    if args.layer and args.layer not in detail.layers:  # else each method would fall back to its own, unsaid
        raise SystemExit(f"gazer: {args.model} has no layer {args.layer!r} (gazer models show {args.model} --json "
                         f"lists them)")
    taken_by_any = {option for method in methods for option in detail.method_options.get(method, [])}
    if nowhere := sorted(set(options) - taken_by_any):
        raise SystemExit(f"gazer: none of {', '.join(methods)} takes option {nowhere[0]!r}"
                         + (f"; they take {', '.join(sorted(taken_by_any))}" if taken_by_any else ""))
    tiles, target = [], None if args.target is None else class_index(client, args.model, args.target)
    tell = telling(args.output == STDOUT)
    for method in methods:
        at_layer = method in detail.layer_methods
        if args.layer and not at_layer:
            tell(f"{method} takes no layer: it explains the input's pixels")
        taken = detail.method_options.get(method, [])
        if untaken := [name for name in options if name not in taken]:
            tell(f"{method} takes no option {', '.join(untaken)}: shown without")
        sent = {name: value for name, value in options.items() if name in taken}

        def explained(layer: str | None) -> Any:
            return client.explain(Path(args.image), args.model, method, target, layer, outputs=["overlay"],
                                  overlay_format="png", **sent).results[0].explanation
        try:
            explanation = explained(args.layer if at_layer else None)
        except ApiError as refused:
            if not (args.layer and at_layer and "layer" in refused_fields(refused)):
                raise
            # cam explains at the classifier's layer only, attention at a gate: its tile shows its own
            tell(f"{method}: {refused.detail}; shown at its own layer")
            explanation = explained(None)
        target = explanation.target.index  # every tile explains the first one's class
        milliseconds = explanation.timings_ms.get("model", 0.0)
        tiles.append(grid.Tile(explanation.overlay_image or b"", f"{method}  {milliseconds:.0f} ms"))
        tell(f"{method}: class {class_name(target, explanation.target.label)}, {milliseconds:.0f} ms")
    encoded = io.BytesIO()
    grid.grid(tiles).save(encoded, format=chosen.upper())
    write_picture(output, encoded.getvalue())
    tell(f"-> {'standard output' if args.output == STDOUT else output}")
    return 0


def field_errors(error: ApiError) -> list[dict[str, Any]]:
    """A refusal's `errors`, those that are objects (what the service sends; a proxy's may be anything)."""
    errors = error.extras.get("errors")
    return [found for found in errors if isinstance(found, dict)] if isinstance(errors, list) else []


def refused_fields(error: ApiError) -> set[str]:
    """The fields a refusal names in its `errors`."""
    return {str(found.get("field")) for found in field_errors(error)}


def cmd_datasets_upload(client: Client, args: argparse.Namespace) -> int:
    try:
        dataset = client.upload_dataset(Path(args.source), args.name)
    except ValueError as error:
        raise SystemExit(f"gazer: {error}") from None
    if args.quiet:
        say(dataset.id)
        return 0
    counts = ", ".join(f"{name} {count}" for name, count in dataset.counts.items())
    say(f"dataset {dataset.id} ({dataset.name}): {dataset.images} images in {len(dataset.classes)} classes "
        f"({counts})")
    for item in dataset.unreadable:
        say(f"  skipped {item.file}: {item.reason}", file=sys.stderr)
    if dataset.unreadable_count > len(dataset.unreadable):
        say(f"  and {dataset.unreadable_count - len(dataset.unreadable)} more images skipped",
            file=sys.stderr)
    return 0


def cmd_datasets_ls(client: Client, args: argparse.Namespace) -> int:
    found = client.datasets()
    say(*table(("id", "name", "images", "classes"),
               [(d.id, d.name, d.images, ",".join(d.classes)) for d in found.data]))
    return 0


def cmd_datasets_show(client: Client, args: argparse.Namespace) -> int:
    say_json(client.dataset(args.dataset_id))
    return 0


def cmd_datasets_delete(client: Client, args: argparse.Namespace) -> int:
    client.delete_dataset(args.dataset_id)
    say(f"dataset {args.dataset_id} deleted")
    return 0


def fine_tune_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {name: getattr(args, name) for name in args.fine_tune_flags if getattr(args, name) is not None}
    return merged(options, key_values(args.set, "--set"))


def submitted(client: Client, job: Job, args: argparse.Namespace) -> int:
    if args.no_follow:  # the id alone, for a script: J=$(gazer finetune ... --no-follow)
        say(job.id)
        return 0
    say(f"job {job.id} {job.state}", flush=True)
    return follow(client, job.id, args.url)


def cmd_finetune(client: Client, args: argparse.Namespace) -> int:
    return submitted(client, client.fine_tune(args.dataset_id, args.output_model, **fine_tune_options(args)), args)


def cmd_sweep(client: Client, args: argparse.Namespace) -> int:
    try:
        space = json.loads(args.space)
    except json.JSONDecodeError as error:
        raise SystemExit(f"gazer: --space is not JSON: {error}") from None
    base = {"dataset_id": args.dataset_id, "output_model": args.output_model, **fine_tune_options(args)}
    options = {name: getattr(args, name) for name in ("trials", "parallel", "metric") if getattr(args, name) is not None}
    if args.sweep_seed is not None:
        options["seed"] = args.sweep_seed
    return submitted(client, client.sweep(base, space, **options), args)


def cmd_explain_dataset(client: Client, args: argparse.Namespace) -> int:
    given = {"method": args.method, "layer": args.layer, "batch_size": args.batch_size,
             "options": key_values(args.option, "--option") or None}
    options = {name: value for name, value in given.items() if value is not None}
    return submitted(client, client.explain_dataset(args.dataset_id, args.model, faithfulness=args.faithfulness,
                                                    **options), args)


def cmd_maximize(client: Client, args: argparse.Namespace) -> int:
    if bool(args.classes) == bool(args.layer) or bool(args.channels) != bool(args.layer):
        raise SystemExit("gazer: give --class (repeatable), or --layer with --channel (repeatable)")
    target = {"classes": job_classes(client, args.model, args.classes)} if args.classes \
        else {"layer": args.layer, "channels": args.channels}
    options = {"model": args.model, **key_values(args.option, "--option")}
    return submitted(client, client.activation_maximization(target, **options), args)


def job_classes(client: Client, model: str, given: Sequence[str]) -> list[int]:
    """Each class's index, for a job: a label is looked up in the model's labels, which a key with only the
    'jobs' scope may not read, though it may submit the job with the indexes."""
    try:  # an index is sent as given, looked up in nothing the 'jobs' scope may not read
        return [index if (index := as_index(named)) is not None else class_index(client, model, named)
                for named in given]
    except ApiError as error:
        if error.status != 403:
            raise
        raise SystemExit(f"gazer: a class given by its label is looked up in {model}'s labels, which needs a key "
                         f"with the 'predict' scope ({error.detail}); give the class by its index (e.g. --class 130): "
                         f"the job itself needs only the 'jobs' scope") from None


# the job types whose commands here are named otherwise
JOB_TYPE_OF_COMMAND = {"finetune": "fine-tune", "maximize": "activation-maximization"}


def cmd_jobs_ls(client: Client, args: argparse.Namespace) -> int:
    found = client.jobs(args.state, args.type, args.parent)
    rows = [(job.id, job.type, job.state, f"{100 * (job.progress or {}).get('fraction', 0):.0f}%",
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))) for job in found.data]
    say(*table(("id", "type", "state", "progress", "created"), rows))
    return 0


def cmd_jobs_show(client: Client, args: argparse.Namespace) -> int:
    say_json(client.job(args.job_id))
    return 0


def cmd_jobs_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.job_id)
    say(f"job {job.id} {job.state}" + (" (cancel requested: it stops at its next step)"
                                        if job.cancel_requested and not job.finished else ""))
    return 0


def cmd_jobs_follow(client: Client, args: argparse.Namespace) -> int:
    return follow(client, args.job_id, args.url)


def cmd_jobs_artifacts(client: Client, args: argparse.Namespace) -> int:
    """Every file the job wrote, written under --output (default a folder named after the job): each a
    new file unless --force; a name the service should never list is skipped, and the status is 1."""
    job = client.job(args.job_id)
    if not job.finished:
        say(f"gazer: job {job.id} is {job.state}: its files come when it ends (gazer jobs follow {job.id})",
            file=sys.stderr)
        return 1
    names = client.artifacts(job.id)
    if not names:
        say(f"job {job.id} ({job.type}, {job.state}) wrote no files", file=sys.stderr)
        return 0
    twice = next((name for name, count in Counter(names).items() if count > 1), None)
    if twice is not None:
        raise SystemExit(f"gazer: the service listed {twice!r} twice among job {job.id}'s files; nothing written")
    folder = Path(args.output or args.job_id)
    if folder.exists() and not folder.is_dir():
        raise SystemExit(f"gazer: {folder} is a file: --output names the folder the job's files go in")
    folder.mkdir(parents=True, exist_ok=True)
    refused = [name for name in names if not plain_file_name(name)]
    for name in names:
        if name in refused:
            say(f"gazer: skipped {name!r}, which the service listed: not a plain file name", file=sys.stderr)
            continue
        try:
            save_artifact(client, args.job_id, name, folder / name, replace=args.force)
        except FileExistsError:
            raise SystemExit(f"gazer: {folder / name} exists; --force replaces the job's files") from None
        say(folder / name)
    return 1 if refused else 0


def plain_file_name(name: str) -> bool:
    """Whether an artifact's name, as the server listed it, can be a file in the output folder: the
    service lists only plain names (no leading dot, no folder or drive, nothing unprintable); any other
    would write outside the folder, or a dotfile such as .bashrc in it."""
    return (name != "" and name.isprintable() and not name.startswith(".") and not any(sep in name for sep in "/\\")
            and name == PurePosixPath(name).name == PureWindowsPath(name).name)


def save_artifact(client: Client, job_id: str, name: str, path: Path, replace: bool) -> None:
    """The artifact written to `path`, a new file; with `replace`, written beside it and then put in
    place of whatever is there (a link is replaced, never written through). A download that fails
    leaves nothing behind."""
    written = path.with_name(f".gazer-{secrets.token_hex(8)}.part") if replace else path
    file = open(written, "xb")  # never an existing file, nor through a link
    try:
        with file:
            client.write_artifact(job_id, name, file)
        if replace:
            os.replace(written, path)
    except BaseException:
        written.unlink(missing_ok=True)
        raise


def cmd_models_ls(client: Client, args: argparse.Namespace) -> int:
    found = client.models()
    say(*table(("id", "version", "architecture", "input", "classes", "description"),
               [(m.id, m.version, m.architecture, m.input_size, m.num_classes, m.description) for m in found.data]))
    return 0


def cmd_models_show(client: Client, args: argparse.Namespace) -> int:
    detail = client.model(args.name)
    if args.json:  # every field, the layers and labels among them
        say_json(detail)
        return 0
    pre = detail.preprocessing
    say(f"{detail.id}@{detail.version}: {detail.architecture}, {detail.num_classes} classes, {detail.status}",
        f"  {detail.description}",
        f"  input {detail.input_size} (resize short side to {pre.resize_short_side_to}, {pre.interpolation}; "
        f"mean {[round(v, 4) for v in pre.mean]}, std {[round(v, 4) for v in pre.std]})",
        f"  default layer {detail.default_layer or 'none (an ONNX model: occlusion and rise)'}; "
        f"{len(detail.layers)} targetable layers (gazer models show {detail.id} --json lists them)",
        f"  methods {', '.join(detail.methods)}; a forward counts {detail.forward_cost:g} in the explain budget "
        f"(forwards of efficientnet_lite0 at 224)",
        f"  attention {', '.join(detail.attention) or 'none'}",
        f"  weights {detail.weights_digest}")
    return 0


def class_index(client: Client, model: str, given: str) -> int:
    """A class named by its index, or by its label (Client.class_index); a usage error names the
    candidates when several hold it."""
    try:
        return client.class_index(model, given)
    except UnknownClass as unknown:
        hint = "" if unknown.candidates else f" (see gazer models labels {model} TEXT)"
        raise SystemExit(f"gazer: {unknown}{hint}") from None


def cmd_models_labels(client: Client, args: argparse.Namespace) -> int:
    labels = client.model(args.name).labels
    found = [(index, label) for index, label in enumerate(labels) if args.text.lower() in label.lower()]
    if not found:
        say(f"gazer: no class of {args.name} has {args.text!r} in its name", file=sys.stderr)
        return 1
    say(*table(("class", "label"), found))
    return 0


def cmd_models_versions(client: Client, args: argparse.Namespace) -> int:
    found = client.versions(args.name)
    say(*table(("version", "architecture", "state", "default", "description"),
               [(v.version, v.architecture, v.state, "yes" if v.default else "", v.description) for v in found.data]))
    return 0


def cmd_models_pin(client: Client, args: argparse.Namespace) -> int:
    ref = client.pin(args.name, args.version)
    say(f"{ref.id} means {ref.id}@{ref.version} from now on")
    return 0


def cmd_models_unpin(client: Client, args: argparse.Namespace) -> int:
    ref = client.unpin(args.name)
    say(f"{ref.id} means its newest version again: {ref.id}@{ref.version}")
    return 0


def cmd_models_delete(client: Client, args: argparse.Namespace) -> int:
    """NAME@VERSION at once; every version of NAME after a yes, asked on a terminal, else --yes."""
    if "@" not in args.ref and not args.yes:
        versions = ", ".join(f"v{version.version}" for version in client.versions(args.ref).data)
        if not sys.stdin.isatty():
            raise SystemExit(f"gazer: deleting model {args.ref} deletes every version of it ({versions}): "
                             f"add --yes, or name one version ({args.ref}@N)")
        print(shown(f"delete model {args.ref} and every version of it ({versions})? [y/N] "), end="",
              file=sys.stderr, flush=True)
        try:
            answer = input()
        except EOFError:  # the input ended (Ctrl-D): no answer, which is no
            answer = ""
            print(file=sys.stderr)
        if answer.strip().lower() not in ("y", "yes"):
            say("nothing deleted")
            return 1
    client.delete_model(args.ref)
    say(f"model {args.ref} deleted" + ("" if "@" in args.ref else ", every version"))
    return 0


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


def cmd_models_upload(client: Client, args: argparse.Namespace) -> int:
    ref = client.upload_model(args.name, architecture=args.architecture, weights=args.weights, onnx=args.onnx,
                              labels=args.labels, mean=args.mean, std=args.std, input_size=args.input_size,
                              resize_size=args.resize_size, interpolation=args.interpolation,
                              cam_layer=args.cam_layer)
    say(f"model {ref.id}@{ref.version}")
    return 0


# ---------------------------------------------------------------- following a job


def describe_progress(job: Job) -> str:
    progress = job.progress or {}
    parts = [job.state]
    trials = progress.get("trials")
    if isinstance(trials, dict) and "total" in trials:  # a sweep: its phase is "trials", which this says
        parts.append(describe_trials(trials, progress.get("best"), job.params.get("metric", "val_accuracy")))
    elif "phase" in progress and not job.finished:
        parts.append(str(progress["phase"]))
    if "epoch" in progress:
        epochs = job.params.get("epochs")
        parts.append(f"epoch {progress['epoch']}" + (f"/{epochs}" if epochs else ""))
    if "step" in progress and "steps" in progress:
        parts.append(f"step {progress['step']}/{progress['steps']}")
    if "images" in progress and "total" in progress:
        parts.append(f"{progress['images']}/{progress['total']} images")
    for name, value in (progress.get("metrics") or {}).items():
        if isinstance(value, float):
            parts.append(f"{name} {value:.3g}")
    return " ".join(parts)


def describe_trials(trials: dict[str, Any], best: Any, metric: str) -> str:
    """A sweep's progress: `2/3 trials done, 1 running, 1 pruned, best val_accuracy 0.750 (trial 1)`."""
    said = [f"{trials.get('done', 0)}/{trials['total']} trials done"]
    said += [f"{trials[state]} {state}" for state in ("running", "pruned", "failed", "cancelled") if trials.get(state)]
    if isinstance(best, dict) and isinstance(best.get("value"), (int, float)):
        said.append(f"best {metric} {best['value']:.3f} (trial {best.get('number')})")
    return ", ".join(said)


def describe_end(job: Job) -> str:
    """What a job that ended made: the model a fine-tune trained, else where its result is."""
    if job.state == "succeeded" and job.type == "fine-tune" and job.result and "model" in job.result:
        made = job.result["model"]
        accuracy = (job.result.get("metrics") or {}).get("val_accuracy")
        scored = f" (val_accuracy {accuracy:.3f})" if isinstance(accuracy, (int, float)) else ""
        return f"job {job.id} succeeded: model {made['id']}@{made['version']}{scored}"
    if job.state == "succeeded" and job.type == "sweep" and job.result and job.result.get("output_model"):
        made, best = job.result["output_model"], job.result.get("best") or {}
        scored = f" (trial {best['number']}, {job.result.get('metric')} {best['value']:.3f})" \
            if isinstance(best.get("value"), (int, float)) else ""
        return f"job {job.id} succeeded: model {made['id']}@{made['version']}{scored}; every trial: gazer jobs show {job.id}"
    if job.error:
        return f"job {job.id} {job.state}: {job.error.get('detail', job.error)}"
    if job.state == "succeeded" and job.result:
        return f"job {job.id} succeeded; its result: gazer jobs show {job.id}"
    return f"job {job.id} {job.state}"


def progress_bar(job_id: str) -> tqdm:
    return tqdm(total=100, desc=f"job {job_id}", unit="%", file=sys.stderr,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}{postfix}")


def follow(client: Client, job_id: str, url: str) -> int:
    """A progress bar from the job's events until it ends: 0 if it succeeded, 1 if not, 130 on
    Ctrl-C, which leaves the job running."""
    last: Job | None = None
    bar: tqdm | None = None  # drawn from the job's first event: a job that is not there gets none
    try:
        with ExitStack() as closing:  # the bar closed, its line ended, however following ends
            def server_stopping() -> None:
                said = f"the server is stopping: following again once it answers (up to {RECONNECT_SECONDS:.0f} s)"
                if bar is None:
                    say(said, file=sys.stderr, flush=True)
                else:
                    bar.set_postfix_str(said)

            for event in client.events(job_id, on_server_stopping=server_stopping):
                if bar is None:
                    bar = closing.enter_context(progress_bar(job_id))
                last = event.job
                bar.n = round(100 * (last.progress or {}).get("fraction", 0.0), 1)
                bar.set_postfix_str(shown(describe_progress(last)), refresh=False)
                bar.refresh()
    except EndedEarly as error:
        say(f"gazer: {error.detail}; see: gazer jobs show {job_id}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        target = "" if url == default_url() else f" --url {url}"
        say("", f"job {job_id} is still running; cancel it with: gazer{target} jobs cancel {job_id}",
            file=sys.stderr, flush=True)
        return INTERRUPTED
    if last is None or not last.finished:
        say(f"gazer: the event stream of job {job_id} ended early; see: gazer jobs show {job_id}", file=sys.stderr)
        return 1
    say(describe_end(last), file=sys.stdout if last.state == "succeeded" else sys.stderr)
    if last.state == "succeeded":
        print_plain_name_elsewhere(client, last)
    return 0 if last.state == "succeeded" else 1


def print_plain_name_elsewhere(client: Client, job: Job) -> None:
    """A model the job published that its plain name does not mean: the name is pinned to another
    version, or (not pinned) means its newest version that loads, a newer one or an older one."""
    made = (job.result or {}).get("model") or (job.result or {}).get("output_model")
    if not isinstance(made, dict):
        return
    name, version = made["id"], made["version"]
    try:
        found = client.versions(name)
    except ApiError as error:
        if error.status == 403:  # a key of the 'jobs' scope alone may not read models: nothing more to say
            return
        raise
    if found.default == version:
        return
    if found.pinned is not None and found.pinned == found.default:
        say(f"{name} still means {name}@{found.default} (pinned): ask for {name}@{version}, "
            f"or serve it as {name} with: gazer models pin {name} {version}")
    elif found.default > version:
        say(f"{name} means its newest version, {name}@{found.default}, published since: ask for {name}@{version}")
    else:
        state = next((listed.state for listed in found.data if listed.version == version), "gone")
        say(f"{name} means {name}@{found.default}, its newest version that loads ({name}@{version}: {state}; "
            f"see gazer models versions {name})")


# ---------------------------------------------------------------- arguments


def installed_version() -> str:
    """The version of the installed `gazer` distribution (pyproject.toml's), or where it is not installed, so."""
    try:
        return importlib.metadata.version("gazer")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gazer", description="Predict and explain image classifiers with a "
                                                               "Gazer service; fine-tune them on your images.")
    parser.add_argument("--url", default=default_url(), help=f"the service (default $GAZER_URL, else {DEFAULT_URL})")
    parser.add_argument("--api-key", default=None, help="the key to send (default $GAZER_API_KEY)")
    parser.add_argument("--version", action="version", version=f"gazer {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: Any, name: str, run: Callable[[Client, argparse.Namespace], int], text: str) \
            -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=text, description=text)
        sub.set_defaults(run=run)
        return sub

    def group(name: str, text: str) -> Any:
        return commands.add_parser(name, help=text, description=text) \
            .add_subparsers(dest="action", required=True, metavar="ACTION")

    def model_flag(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--model", "-m", default=DEFAULT_MODEL, help="NAME or NAME@VERSION (default %(default)s)")

    def no_follow_flag(sub: argparse.ArgumentParser) -> None:  # the job commands follow their job unless told
        sub.add_argument("--no-follow", action="store_true", help="submit, print the job id alone and return")

    sub = command(commands, "predict", cmd_predict, "top classes of each image, as a table")
    sub.add_argument("images", nargs="+", metavar="IMG")
    model_flag(sub)
    sub.add_argument("--top-k", "-k", type=int, default=None, help="classes per image (server default 5)")
    sub.add_argument("--resize", choices=("crop", "stretch"), default=None)
    sub.add_argument("--json", action="store_true", help="the API's answer as JSON, not a table")

    sub = command(commands, "explain", cmd_explain, "write each image's explanation overlay (PNG, JPEG or WebP)")
    sub.add_argument("images", nargs="+", metavar="IMG")
    model_flag(sub)
    sub.add_argument("--method", default=None, help="cam, saliency, ... (see /docs); default the model's own: "
                                                     "gradcam, or occlusion for a model served from ONNX alone")
    sub.add_argument("--target", default=None, metavar="N|LABEL",
                     help="the class, by index or label (tabby; default the top-1)")
    sub.add_argument("--layer", default=None,
                     help="layer to explain, for a method that takes one (default the model's CAM layer)")
    sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="a method option, e.g. steps=32 or baseline=blur; repeatable")
    sub.add_argument("--output", "-o", required=True,
                     help="the overlay to write: PNG, or JPEG or WebP by its name's ending (.jpg, .webp); - for "
                          "standard output; with several images a folder, each overlay named after its image")
    sub.add_argument("--format", choices=tuple(OVERLAY_ENDINGS), default=None,
                     help="the overlay's format (default: by -o's ending; png for a folder)")
    sub.add_argument("--resize", choices=("crop", "stretch"), default=None,
                     help="crop (default): the model's own preprocessing; stretch: the whole image")
    sub.add_argument("--heatmap", default=None, metavar="PATH",
                     help="also write the grey heatmap PNG here (with several images a folder)")
    sub.add_argument("--faithfulness", action="store_true",
                     help="also score the map by deletion and insertion (about 34 more forward passes an image)")

    sub = command(commands, "compare", cmd_compare, "one grid image of several methods' overlays")
    sub.add_argument("image", metavar="IMG")
    model_flag(sub)
    sub.add_argument("--methods", required=True, help="comma-separated, e.g. gradcam,layercam,saliency")
    sub.add_argument("--target", default=None, metavar="N|LABEL",
                     help="the class, by index or label (tabby; default the top-1)")
    sub.add_argument("--layer", default=None,
                     help="layer to explain, for a method that takes one (default the model's CAM layer)")
    sub.add_argument("--output", "-o", required=True,
                     help="the grid to write: PNG, or JPEG or WebP by its name's ending (.jpg, .webp); - for "
                          "standard output; a folder (one that exists, or a name ending in /): the grid named "
                          "after the image")
    sub.add_argument("--format", choices=tuple(OVERLAY_ENDINGS), default=None,
                     help="the grid's format (default: by -o's ending; png for standard output)")
    sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="a method's own option (steps=32, baseline=blur, ...), sent to the methods that take it; "
                          "repeatable")

    datasets = group("datasets", "upload and list data sets")
    sub = command(datasets, "upload", cmd_datasets_upload,
                  "upload a folder (one folder of images per class; zipped here) or a .zip / .tar.gz")
    sub.add_argument("source", metavar="DIR_OR_ARCHIVE")
    sub.add_argument("--name", default=None, help="a name to show (default the id)")
    sub.add_argument("--quiet", "-q", action="store_true", help="print the data set's id only")
    command(datasets, "ls", cmd_datasets_ls, "list data sets")
    command(datasets, "show", cmd_datasets_show, "a data set's description as JSON").add_argument("dataset_id", metavar="ID")
    command(datasets, "delete", cmd_datasets_delete, "delete a data set").add_argument("dataset_id", metavar="ID")

    sub = command(commands, "finetune", cmd_finetune,
                  "fine-tune a model on a data set and follow the job's progress until it ends")
    sub.set_defaults(fine_tune_flags=add_fine_tune_flags(sub))
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="any other field, e.g. head.hidden=128 or augmentation.flip=false; repeatable")
    no_follow_flag(sub)

    sub = command(commands, "sweep", cmd_sweep, "search fine-tune settings: trials of the fine-tune these flags "
                                              "describe, over --space; the best trial's model is published")
    sub.set_defaults(fine_tune_flags=add_fine_tune_flags(sub))
    sub.add_argument("--space", required=True, metavar="JSON",
                     help='the fields to search, e.g. \'{"lr": {"log_uniform": [1e-4, 1e-1]}, '
                          '"head.dropout": {"choice": [0, 0.3]}}\'')
    sub.add_argument("--trials", type=int, default=None, help="how many (server default)")
    sub.add_argument("--parallel", type=int, default=None, help="trials at once (server default)")
    sub.add_argument("--metric", default=None, help="what the best trial is best at: val_accuracy (highest) or "
                                                    "val_loss (lowest); default val_accuracy")
    sub.add_argument("--sweep-seed", type=int, default=None, help="the sampler's seed (--seed is each trial's)")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="any other field of the base fine-tune; repeatable")
    no_follow_flag(sub)

    sub = command(commands, "explain-dataset", cmd_explain_dataset,
                  "explain every image of a data set on a worker (fetch the results with: gazer jobs artifacts ID)")
    sub.add_argument("dataset_id", metavar="DATASET")
    model_flag(sub)
    sub.add_argument("--method", default=None, help="cam, saliency, ... (see /docs); default the model's own: "
                                                     "gradcam, or occlusion for a model served from ONNX alone")
    sub.add_argument("--layer", default=None,
                     help="layer to explain, for a method that takes one (default the model's CAM layer)")
    sub.add_argument("--faithfulness", action="store_true", help="also score each map by deletion and insertion")
    sub.add_argument("--batch-size", type=int, default=None, metavar="N",
                     help="images explained together (1-64; server default 8)")
    sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="a method option, e.g. steps=32; repeatable")
    no_follow_flag(sub)

    sub = command(commands, "maximize", cmd_maximize,
                  "activation maximization: what a class (or channel) looks like to the network "
                  "(fetch the images with: gazer jobs artifacts ID)")
    model_flag(sub)
    sub.add_argument("--class", dest="classes", action="append", default=[], metavar="N|LABEL",
                     help="a class, by index or label (flamingo); repeatable")
    sub.add_argument("--layer", default=None, help="instead of classes: a layer, with --channel")
    sub.add_argument("--channel", dest="channels", type=int, action="append", default=[], metavar="N",
                     help="a channel of --layer; repeatable")
    sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="e.g. steps=200, size=128, lr=0.05; repeatable")
    no_follow_flag(sub)

    jobs = group("jobs", "list, show, follow and cancel jobs")
    sub = command(jobs, "ls", cmd_jobs_ls, "list jobs")
    sub.add_argument("--state", default=None, choices=typing.get_args(Job.model_fields["state"].annotation))
    sub.add_argument("--type", default=None, type=lambda given: JOB_TYPE_OF_COMMAND.get(given, given),
                     help="fine-tune, sweep, explain-dataset or activation-maximization (or the commands' names: "
                          "finetune, maximize)")
    sub.add_argument("--parent", default=None, metavar="ID", help="the trials of sweep ID")
    sub = command(jobs, "artifacts", cmd_jobs_artifacts, "write the files a finished job made into a folder")
    sub.add_argument("job_id", metavar="ID")
    sub.add_argument("--output", "-o", default=None, help="the folder (default ./ID, made if need be)")
    sub.add_argument("--force", action="store_true", help="replace files already in the folder (by default "
                                                          "an existing file is an error)")
    for name, run, text in (("show", cmd_jobs_show, "a job's record as JSON"),
                            ("cancel", cmd_jobs_cancel, "cancel a job (a running one stops at its next step)"),
                            ("follow", cmd_jobs_follow, "a job's progress bar until it ends")):
        command(jobs, name, run, text).add_argument("job_id", metavar="ID")

    models = group("models", "list, describe, upload, pin and delete models")
    command(models, "ls", cmd_models_ls, "list models")
    sub = command(models, "show", cmd_models_show, "describe a model")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--json", action="store_true", help="the API's whole description as JSON: its layers, "
                                                         "labels, methods, ...")
    sub = command(models, "labels", cmd_models_labels, "a model's classes by index (what --target counts)")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("text", nargs="?", default="", metavar="TEXT", help="only the labels holding TEXT (any case)")
    command(models, "versions", cmd_models_versions, "a model's versions").add_argument("name", metavar="NAME")
    sub = command(models, "pin", cmd_models_pin, "make a plain NAME mean VERSION (a rollback)")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("version", type=int, metavar="VERSION")
    command(models, "unpin", cmd_models_unpin, "make a plain NAME mean its newest version again") \
        .add_argument("name", metavar="NAME")
    sub = command(models, "delete", cmd_models_delete, "delete one version of a model (NAME@VERSION), or every "
                                                        "version (NAME: asks first)")
    sub.add_argument("ref", metavar="NAME[@VERSION]")
    sub.add_argument("--yes", action="store_true", help="delete every version of NAME without asking")
    sub = command(models, "upload", cmd_models_upload,
                  "upload a model: --architecture with --weights (.safetensors), or --onnx")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--architecture", default=None, help="a torchvision builder (resnet50, ...) or timm:NAME")
    sub.add_argument("--weights", type=Path, default=None, help=".safetensors state dict")
    sub.add_argument("--onnx", type=Path, default=None, help="a self-contained ONNX classifier")
    sub.add_argument("--labels", type=Path, default=None,
                     help="text file, one class name per line (default: the newest earlier version's, where it has "
                          "as many classes, else 0, 1, ...)")
    for flag in ("--mean", "--std"):
        sub.add_argument(flag, nargs="+", action=ThreeNumbers, default=None, metavar="N",
                         help="three numbers, as 0.5 0.5 0.5 or 0.5,0.5,0.5")
    sub.add_argument("--input-size", type=int, default=None)
    sub.add_argument("--resize-size", type=int, default=None)
    sub.add_argument("--interpolation", choices=("bilinear", "bicubic"), default=None)
    sub.add_argument("--cam-layer", default=None)

    keys = group("keys", "API keys, in the service's key file (run where the service runs)")

    def key_command(name: str, run: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        sub = command(keys, name, run, text)
        sub.set_defaults(local=True)
        sub.add_argument("--file", type=Path, default=os.environ.get("GAZER_API_KEYS"),
                         help="the key file (default $GAZER_API_KEYS)")
        return sub

    sub = key_command("create", cmd_keys_create, "make a key, print it once and store only its hash")
    sub.add_argument("--scopes", required=True, help=f"comma-separated, of: {', '.join(SCOPES)}")
    sub.add_argument("--label", default="", help="who or what the key is for")
    key_command("list", cmd_keys_list, "the keys in the file: id, scopes, label, when made (never the key)")
    sub = key_command("revoke", cmd_keys_revoke, "remove a key: the service refuses it from its next request")
    sub.add_argument("id", metavar="ID", help="the key's id, as `gazer keys list` shows it (gz_<ID>_...)")
    return parser


def _no_key_file(args: argparse.Namespace) -> bool:
    if args.file is None:
        say("gazer: name the key file with --file or GAZER_API_KEYS", file=sys.stderr)
    return args.file is None


def cmd_keys_create(args: argparse.Namespace) -> int:
    scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        say(f"gazer: scopes must be some of {', '.join(SCOPES)}; got {args.scopes!r}", file=sys.stderr)
        return 2
    if _no_key_file(args):
        return 2
    key, record = create_key(args.file, scopes, args.label)
    say(key)
    say(f"key {record.id} ({', '.join(record.scopes)}) added to {args.file}; the key is not stored, "
        f"keep it now", file=sys.stderr)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    if _no_key_file(args):
        return 2
    records = read_key_file(args.file).keys
    say(*table(["id", "scopes", "label", "created"],
               [(record.id, ",".join(record.scopes), record.label,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created_at))) for record in records]))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    if _no_key_file(args):
        return 2
    try:
        record = revoke_key(args.file, args.id)
    except KeyError:
        say(f"gazer: {args.file} has no key {args.id!r}; `gazer keys list` shows the ids", file=sys.stderr)
        return 1
    say(f"key {record.id} ({', '.join(record.scopes)}{', ' + record.label if record.label else ''}) revoked",
        file=sys.stderr)
    return 0


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "local", False):
        return args.run(args)
    try:
        with Client(args.url, api_key=args.api_key) as client:
            status = args.run(client, args)
            sys.stdout.flush()  # where a closed pipe shows, below, rather than at exit
            return status
    # an answer that is not what the API answers: unreadable, refused by the wire models, or with a field
    # of the wrong type, or missing, where a command reads it
    except (BadAnswer, httpx.DecodingError, pydantic.ValidationError, json.JSONDecodeError, KeyError,
            TypeError) as error:
        say(f"gazer: unexpected answer from {args.url}: {unexpected(error)}", file=sys.stderr)
        return 1
    except ApiError as error:
        say(f"gazer: {error.status} {error.title}: {error.detail}", *problem_notes(error), file=sys.stderr)
        return 1
    except (EmptyName, NoAnswer) as error:  # refused before any request; or not reached, or no answer in time
        say(f"gazer: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `gazer jobs show ID | head`: the reader has had what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 1
    except OSError as error:  # a local file: as other commands say it (`gazer: nosuchdir: No such file or directory`)
        say(f"gazer: {error.filename}: {error.strerror}" if error.filename and error.strerror else f"gazer: {error}",
            file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED
    except SystemExit as refusal:  # a usage error, which may quote the server (a label): shown as the rest
        raise SystemExit(shown(refusal.code) if isinstance(refusal.code, str) else refusal.code) from None
