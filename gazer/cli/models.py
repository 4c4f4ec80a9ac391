"""gazer models: list, describe, upload, pin and delete models."""

from __future__ import annotations

import argparse
import sys

from gazer.cli.output import say, say_json, shown, table
from gazer.client import Client


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
        f"  default layer {detail.default_layer}; {len(detail.layers)} targetable layers (gazer models show "
        f"{detail.id} --json lists them)" if detail.layers else "  no layers to explain (an ONNX model: occlusion "
                                                                 "and rise explain its input)",
        f"  methods {', '.join(detail.methods)}; a forward counts {detail.forward_cost:g} in the explain budget "
        f"(forwards of efficientnet_lite0 at 224)",
        f"  attention {', '.join(detail.attention) or 'none'}",
        f"  weights {detail.weights_digest}")
    return 0


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


def cmd_models_upload(client: Client, args: argparse.Namespace) -> int:
    ref = client.upload_model(args.name, architecture=args.architecture, weights=args.weights, onnx=args.onnx,
                              labels=args.labels, mean=args.mean, std=args.std, input_size=args.input_size,
                              resize_size=args.resize_size, interpolation=args.interpolation,
                              cam_layer=args.cam_layer)
    say(f"model {ref.id}@{ref.version}")
    return 0
