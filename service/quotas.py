"""What one API key may keep: data sets, model names, and versions of each name. A key holds a
name while the name has a published version, an upload runs under it, or one of the key's
queued or running jobs will publish there; a claim that ended with nothing published (a job
cancelled or failed, an upload refused) holds nothing, so it neither counts against the quota
nor keeps other keys out. Others, unless they hold `admin`, may not publish under a name a key
holds, and only the key that holds a name (or an admin) may delete its versions.

Each check runs under the key's lock (`JobQueue.claim_lock`) together with what makes its claim
hold (the queued job, the upload's mark, the data set's folder), so that two requests of one key
cannot both pass the last free place."""

from __future__ import annotations

from contextlib import suppress

from core import datasets
from core.errors import Conflict, GazerError
from core.job_runners import FINE_TUNE
from core.models import versions
from core.names import BUILTIN_MODELS
from core.storage import Storage
from core.sweeps import SWEEP
from service.auth import Caller, Forbidden
from service.queue import JobQueue, QueueUnavailable
from service.rate_limits import key_client
from service.settings import Settings


class QuotaExceeded(GazerError):
    code = "quota-exceeded"
    status = 403


def check_dataset_quota(caller: Caller, storage: Storage, settings: Settings) -> None:
    """Refuses a new data set of a key at its quota."""
    if caller.owner is None:
        return
    held = datasets.count_owned(storage.datasets, caller.owner)
    if held >= settings.max_datasets_per_key:
        raise QuotaExceeded(f"this key holds {held} data sets, its quota (GAZER_MAX_DATASETS_PER_KEY); "
                            f"delete one first")


def claim_model_name(caller: Caller, storage: Storage, queue: JobQueue, name: str, settings: Settings) -> None:
    """Before a fine-tune or upload publishes under `name`: the name is this key's, or free
    and within the key's quota (then it becomes this key's), and it has room for one more
    version. Under `queue.claim_lock`."""
    if caller.owner is None or name in BUILTIN_MODELS:  # built-in names are refused elsewhere
        return
    holder = _holder(storage, queue, name)
    if holder is not None and holder != caller.owner:
        if caller.grants("admin"):
            return
        raise _taken(name)
    if not caller.grants("admin") and (other := _look_alike_of_anothers(storage, queue, name, caller.owner)):
        raise Forbidden(f"model name {name!r} differs only in case from {other!r}, which belongs to another key; "
                        f"choose another output_model", field="output_model")
    if holder is None and not caller.grants("admin"):
        held = _names_held(storage, queue, caller.owner, claiming=name)
        if len(held) >= settings.max_models_per_key:
            raise QuotaExceeded(f"this key holds {len(held)} model names, its quota (GAZER_MAX_MODELS_PER_KEY); "
                                f"delete one first or publish a new version of one of {', '.join(held[:10])}")
    if not caller.grants("admin"):
        _check_version_room(storage, queue, caller.owner, name, settings.max_versions_per_model)
    if holder is None:
        versions.release_name(storage.models, name)  # a claim that holds nothing any more
    if versions.claim_name(storage.models, name, caller.owner) != caller.owner and not caller.grants("admin"):
        raise _taken(name)  # another key claimed it just now


def _check_version_room(storage: Storage, queue: JobQueue, owner: str, name: str, most: int) -> None:
    published = versions.versions(storage.models, name)
    coming = sum(1 for job in queue.active_jobs(key_client(owner)) if _publishes_to(job) == name)
    if len(published) + coming >= most:
        raise QuotaExceeded(f"model {name!r} has {len(published)} versions and {coming} queued or running jobs that "
                            f"will publish there, its limit (GAZER_MAX_VERSIONS_PER_MODEL); delete a version first "
                            f"(DELETE /v1/models/{name}@VERSION, oldest {published[0] if published else '-'}) "
                            f"or publish under another name")


def check_may_delete_versions(caller: Caller, storage: Storage, name: str) -> None:
    """Versions of `name` may be deleted by an admin key, and by the key that holds the name
    (a built-in name is left to the registry's 409)."""
    if name in BUILTIN_MODELS or caller.grants("admin"):
        return
    if versions.name_owner(storage.models, name) != caller.owner:
        raise Forbidden(f"versions of model {name!r} may be deleted only by the key that holds the name, "
                        f"or by a key with admin")


def release_unused_claim(caller: Caller, storage: Storage, queue: JobQueue, name: str) -> None:
    """After an upload under `name` failed: its claim goes, unless the key holds the name anyway
    (another of its uploads or jobs). Under `queue.claim_lock`."""
    if caller.owner is not None and versions.name_owner(storage.models, name) == caller.owner \
            and _holder(storage, queue, name) is None:
        versions.release_name(storage.models, name)


def _look_alike_of_anothers(storage: Storage, queue: JobQueue, name: str, owner: str) -> str | None:
    """A name that another key holds and that differs from `name` only in case: `Shared` beside
    `shared` was listed as a model of its own, easily taken for the other's (and one folder on a
    data volume that ignores case)."""
    folded = name.casefold()
    names = [path.name for path in storage.models.iterdir() if path.is_dir()] if storage.models.is_dir() else []
    return next((other for other in sorted(names) if other != name and other.casefold() == folded
                 and _holder(storage, queue, other) not in (None, owner)), None)


def _taken(name: str) -> Forbidden:
    return Forbidden(f"model name {name!r} belongs to another key; choose another output_model", field="output_model")


def _holder(storage: Storage, queue: JobQueue, name: str) -> str | None:
    """The key that holds `name` (see the module's words), "the open service" for a name
    published before keys were configured, or None when the name is free."""
    owner = versions.name_owner(storage.models, name)
    if versions.versions(storage.models, name):
        return owner or "the open service"
    if owner is not None and (versions.upload_running(storage.models, name) or name in _publishing_to(queue, owner)):
        return owner
    return None


def _names_held(storage: Storage, queue: JobQueue, owner: str, claiming: str) -> list[str]:
    """The names `owner` holds. Its other claims that hold nothing are released on the way, each
    under its name's lock, and only if still its own and still holding nothing then (another key
    may just have claimed it). A name whose lock is busy is left for another time, as is
    `claiming`, whose lock the caller holds: waiting there could wait on a request that waits
    on this one."""
    publishing = _publishing_to(queue, owner)
    held = []
    for name in versions.names_owned(storage.models, owner):
        if versions.versions(storage.models, name) or versions.upload_running(storage.models, name) \
                or name in publishing:
            held.append(name)
        elif name != claiming:
            with suppress(QueueUnavailable), queue.name_lock(name, wait=False):
                if versions.name_owner(storage.models, name) == owner and _holder(storage, queue, name) is None:
                    versions.release_name(storage.models, name)
    return held


def _publishing_to(queue: JobQueue, owner: str) -> set[str]:
    """The model names the key's queued and running fine-tunes and sweeps will publish under."""
    return {name for job in queue.active_jobs(key_client(owner)) if (name := _publishes_to(job)) is not None}


def _publishes_to(job: dict) -> str | None:
    """The model name a fine-tune or a sweep publishes under (a sweep: its best trial's model)."""
    if job["type"] == FINE_TUNE:
        return job["params"]["output_model"]
    if job["type"] == SWEEP:
        return job["params"]["base"]["output_model"]
    return None


def check_unread(what: str, jobs: list[dict], caller: Caller, field: str) -> None:
    """A 409 for deleting `what` while `jobs` that the caller may cancel (its own; all for admin or
    an open service) read it. Other keys' jobs do not hold it: they could keep a version from its
    holder for as long as they resubmit, and fail with `unknown-model` instead."""
    if mine := [job["id"] for job in jobs if caller.sees(job["owner"])]:
        raise Conflict(f"{what} is read by {len(mine)} queued or running job(s) ({', '.join(mine[:5])}"
                       f"{', ...' if len(mine) > 5 else ''}); cancel them, or delete it once they end", field=field)
