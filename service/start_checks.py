"""Why the API may not start as configured, told in one line before anything starts: `python -m
service` and `make run` exit 2 with it; and the GAZER_ variables that nothing reads."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import sys
import tempfile

from core.errors import GazerError
from core.models.refs import check_ref
from core.storage import Storage
from infra.embedded_redis import in_use
from infra.settings import EXIT_REFUSED, WorkerSettings
from schemas.api_keys import read_key_file, why_unreadable
from service.settings import Settings

# GAZER_ variables read outside the settings classes: the Python client's and the CLI's, uvicorn's
# access log, docker-compose's Redis password
OTHER_VARIABLES = frozenset({"GAZER_URL", "GAZER_API_KEY", "GAZER_ACCESS_LOG", "GAZER_REDIS_PASSWORD"})


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


def unknown_default_model(settings: Settings) -> str | None:
    """Why GAZER_DEFAULT_MODEL names no model this service has, or None: the API would start,
    log why it could not load it, and never be ready."""
    try:
        check_ref(Storage(settings.data_dir).models, settings.default_model)
    except GazerError as error:
        return f"GAZER_DEFAULT_MODEL={settings.default_model}: {error.detail}"
    return None


def unknown_variables(environment: dict[str, str]) -> list[str]:
    """A line for each GAZER_ variable that nothing reads (a misspelt one was ignored without a
    word), naming the closest one that is read; names in any case, as the settings read them."""
    known = OTHER_VARIABLES | {f"GAZER_{field.upper()}" for settings in (Settings, WorkerSettings)
                               for field in settings.model_fields}
    lines = []
    for name in sorted(name.upper() for name in environment if name.upper().startswith("GAZER_")):
        if name not in known:
            # compared without the prefix, which every name shares
            close = difflib.get_close_matches(name.removeprefix("GAZER_"),
                                              [other.removeprefix("GAZER_") for other in known], n=1)
            lines.append(f"{name} is not a Gazer setting; it is ignored"
                         + (f" (did you mean GAZER_{close[0]}?)" if close else ""))
    return lines


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
