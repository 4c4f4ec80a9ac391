"""`gazer`: the API from a shell. `gazer --help`, `gazer COMMAND --help`."""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import httpx
import pydantic

from gazer.cli.following import INTERRUPTED
from gazer.cli.output import say, shown
from gazer.cli.parser import build_parser
from gazer.cli.refusals import problem_notes, unexpected
from gazer.client import Client
from gazer.errors import ApiError, BadAnswer, EmptyName, NoAnswer


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
