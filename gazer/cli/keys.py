"""gazer keys: API keys in the service's key file, on the machine the service runs on."""

from __future__ import annotations

import argparse
import sys
import time

from gazer.cli.output import say, table
from schemas.api_keys import SCOPES, create_key, read_key_file, revoke_key


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
