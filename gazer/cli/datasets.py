"""gazer datasets: upload, list, show and delete data sets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gazer.cli.output import say, say_json, table
from gazer.client import Client


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
