"""Why the API may not start as configured, told in one line before anything starts: `python -m
service` and `make run` exit 2 with it."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
import tempfile

from core.storage import Storage
from infra.embedded_redis import in_use
from infra.settings import EXIT_REFUSED
from schemas.api_keys import read_key_file, why_unreadable
from service.settings import Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listening_port() -> int:
    """$PORT (default 8000), or exit 2 with a line saying what is wrong with it."""
    given = os.environ.get("PORT", "8000")
    if not re.fullmatch(r"\d{1,5}", given.strip(), re.ASCII) or int(given) > 65535:
        print(f"PORT={given}: must be a port number, 0 to 65535", file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    return int(given)


def refusal(settings: Settings, host: str) -> str | None:
    """Why the service may not start on `host`, or None: a data folder it cannot write (each upload
    and job would fail, though it said it was ready) or whose embedded Redis another runs, a key
    file that cannot be read (every request would be refused), or no keys off loopback."""
    storage = Storage(settings.data_dir)
    if (why := unwritable(storage)) is not None:
        return why
    if settings.redis_url is None and (why := in_use(storage.redis)) is not None:
        return why
    if settings.api_keys is not None:
        try:
            read_key_file(settings.api_keys, missing_ok=False)
        except (OSError, ValueError) as error:
            return (f"GAZER_API_KEYS={settings.api_keys}: not a key file this service can read "
                    f"({why_unreadable(error)}); `gazer keys create --scopes admin` writes one with its first key")
    if settings.api_keys is None and not settings.allow_open and not is_loopback(host):
        return (f"refusing to serve {host} without API keys: anyone who reaches the port could delete data and "
                f"publish models. Set GAZER_API_KEYS (create one with `gazer keys create --scopes admin`), "
                f"or GAZER_ALLOW_OPEN=1 to run open anyway.")
    return None


def unwritable(storage: Storage) -> str | None:
    """Why the data folder, or a folder of it that exists, cannot be written, or None."""
    try:
        storage.root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"GAZER_DATA_DIR={storage.root}: cannot make it ({error.strerror or error})"
    for folder in storage.folders:
        try:
            if folder.is_dir():
                with tempfile.TemporaryFile(dir=folder):
                    pass
        except OSError as error:
            return f"GAZER_DATA_DIR={storage.root}: cannot write in {folder} ({error.strerror or error})"
    return None


def port_taken(host: str, port: int) -> str | None:
    """Why the API could not listen on host:port now (on each address `host` names), or None."""
    try:
        addresses = {(family, address[0]) for family, _, _, _, address in
                     socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)}
    except OSError as error:
        return f"cannot listen on {host}:{port}: {error.strerror or error} (HOST names no address here)"
    for family, address in sorted(addresses):
        try:
            with socket.create_server((address, port), family=family):
                pass
        except OSError as error:
            return (f"cannot listen on {host}:{port}: {error.strerror or error}. Another Gazer, or another server, "
                    f"may hold it: stop it, or choose another port (PORT={port + 1} make run).")
    return None
