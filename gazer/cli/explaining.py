"""predict, explain and compare: images in, tables and pictures out."""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path
from typing import Any

from gazer import grid
from gazer.cli.arguments import class_index, method_options, refuse_folders
from gazer.cli.output import STDOUT, class_name, say, say_json, table, telling, write_picture
from gazer.cli.refusals import about_the_image, files_at_fault, naming_the_file, refused_fields
from gazer.client import Client
from gazer.errors import ApiError
from schemas.problems import TITLES


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
        at_layer = f" at layer {explanation.layer}; try another layer or method" if explanation.layer else \
            "; try another method"
        tell(f"the map is flat (all zeros): this method found nothing to point at for this class{at_layer}")
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
