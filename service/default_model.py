"""The default model kept loaded: before the API serves, and again whenever the version its name
means is not loaded (a new version published or pinned; a load that failed, once its failure may
be retried), so that readiness does not wait for a request to load it."""

from __future__ import annotations

import logging

import anyio
from starlette.concurrency import run_in_threadpool

from core.errors import GazerError
from core.models.registry import RETRY_FAILED_LOAD_SECONDS, ModelRegistry

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0


async def load(registry: ModelRegistry, ref: str, said: str | None = None) -> str | None:
    """`ref` loaded unless it is already (the registry answers a loaded one at once); why it is not,
    logged unless it is `said` (the last reason)."""
    try:
        await run_in_threadpool(registry.get, ref)
        return None
    except GazerError as error:
        if error.detail != said:
            log.error("default model %s not loaded: %s", ref, error.detail)
        return error.detail


async def keep_loaded_forever(registry: ModelRegistry, ref: str, said: str | None = None) -> None:
    """load() every CHECK_SECONDS, or RETRY_FAILED_LOAD_SECONDS after a load that failed (one that
    may pass later, a full disk say, is not remembered as failed, and each try rebuilds the
    network); each new reason it cannot load is logged once."""
    while True:
        await anyio.sleep(CHECK_SECONDS if said is None else RETRY_FAILED_LOAD_SECONDS)
        try:
            said = await load(registry, ref, said)
        except Exception:  # the models folder unreadable for a moment: the next round tries again
            log.exception("default model %s could not be checked", ref)
