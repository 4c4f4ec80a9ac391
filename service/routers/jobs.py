"""Long jobs: submit (202 + Location), poll, follow as server-sent events, cancel, artifacts."""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Iterator

import redis
from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import FileResponse, StreamingResponse
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.staticfiles import NotModifiedResponse
from starlette.concurrency import run_in_threadpool

from core.dataset_explain.runner import check_explain_dataset, explain_dataset_config
from core.datasets import describe_dataset
from core.errors import Conflict, InvalidRequest, NotFound, UnknownModel
from core.job_runners import ACTIVATION_MAXIMIZATION, EXPLAIN_DATASET, FINE_TUNE, RUNNERS, check_fine_tune, \
    check_maximization_memory, fine_tune_config, maximization_config
from core.job_costs import check_job_cost, fine_tune_cost, maximization_cost
from core.jobs import STATES, TERMINAL
from core.models.refs import parse_ref
from core.models.registry import ModelRegistry, network_forward_cost
from core.storage import Storage
from core.sweeps import MAX_TRIALS, SWEEP, checked_trials, most_parallel_trials, parse_space, sweep_config
from core.training.config import FineTuneConfig
from core.visualize.activation_max import validate as validate_maximization
from schemas.jobs import ActivationMaximizationRequest, Artifact, ArtifactList, ExplainDatasetRequest, FineTuneRequest, \
    Job, JobList, SweepRequest, artifact_url
from schemas.problems import Problem, problem
from service.auth import Caller, CallerDep, Unauthorized, authenticate, required_scope
from service.dependencies import QueueDep, RegistryDep, SettingsDep, StorageDep, load_model
from service.errors import problem_response
from service.http_protocol import SERVER_STOPPING
from service.quotas import claim_model_name
from service.rate_limits import client_id

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JOB_TYPES = (*RUNNERS, SWEEP)  # what a worker runs, and the sweeps that make fine-tunes
KEEPALIVE_SECONDS = 15.0
# An event stream reads its job every 0.25 s while it changes, backing off to 2 s while not.
FIRST_POLL_SECONDS, LONGEST_POLL_SECONDS = 0.25, 2.0


def _room_for_results(storage: StorageDep) -> None:
    """Every job writes its results to the data folder: none is taken below its floor of free
    space (507), checked before a fine-tune or sweep claims its model name."""
    storage.check_room()


ROOM = Depends(_room_for_results)


@contextmanager
def _references_in_body(dataset: str = "dataset_id", model: str = "model") -> Iterator[None]:
    """An unknown model or data set named in a request body is a 422, not a 404, whose field is
    the one that names it: `model` or `dataset`."""
    try:
        yield
    except NotFound as error:
        raise InvalidRequest(error.detail, field=model if isinstance(error, UnknownModel) else dataset) from None


@contextmanager
def _named_in_sweep(space: dict[str, Any]) -> Iterator[None]:
    """A trial's refusal names the field as the sweep body has it: `space.NAME` where the space
    samples it, else `base.NAME`."""
    try:
        yield
    except InvalidRequest as error:
        field = error.extra.get("field")
        if not field:
            raise
        sampled = {dimension.name for dimension in parse_space(space)}
        named = f"space.{field}" if field in sampled else f"base.{field}"
        raise type(error)(error.detail, field=named, **{k: v for k, v in error.extra.items() if k != "field"}) from None


@contextmanager
def _dataset_kept(queue: QueueDep, storage: StorageDep, dataset_id: str, field: str = "dataset_id") -> Iterator[None]:
    """Held while a job that reads data set `dataset_id` (the body's `field`) is queued: a delete looks
    for such jobs under the same lock, so it sees this one, or it came first and the data set is gone (422)."""
    with queue.dataset_lock(dataset_id):
        with _references_in_body(dataset=field):
            describe_dataset(storage.datasets, dataset_id)
        yield


@contextmanager
def _model_kept(queue: QueueDep, registry: RegistryDep, ref: str, field: str) -> Iterator[None]:
    """Held while a job that reads model version `ref` (NAME@VERSION, the body's `field`) is
    queued: a delete looks for such jobs under the same lock, so it sees this one, or it came first
    and the version is gone (422)."""
    with queue.model_lock(parse_ref(ref)[0]):
        with _references_in_body(model=field):
            registry.spec(ref)
        yield


def _version_now(registry: RegistryDep, ref: str) -> str:
    """`NAME@VERSION` for what `ref` means now: a job is checked against that version and runs it
    (by a plain name, the worker ran whatever version it meant when the job started, which its
    memory and cost limits had never seen)."""
    return registry.spec(ref).ref


def _visible_job(job_id: str, queue: QueueDep, caller: Caller) -> dict[str, Any]:
    """The job's record; 404 for a job of another key, unless the caller holds `admin`."""
    job = queue.store.get(job_id)
    caller.check_owns(job["owner"], f"job {job_id!r}")
    return job


def _submit(job_type: str, params: dict[str, Any], queue: QueueDep, caller: Caller, request: Request,
            settings: SettingsDep, response: Response) -> Job:
    """Queued as the caller's (429 when it has its limit of jobs queued or running); 202 + Location."""
    job = queue.submit(job_type, params, caller.owner, client_id(caller, request), settings.max_active_jobs_per_client,
                       settings.max_jobs_kept_per_client, request.app.state.registry.storage)
    response.headers["Location"] = f"/v1/jobs/{job['id']}"
    return Job(**job)


def _fine_tune_cost(config: FineTuneConfig, registry: ModelRegistry, storage: Storage) -> tuple[int, str]:
    """The fine-tune's cost (job_costs), and what it is of."""
    base = registry.spec(config.base_model)
    size = config.input_size or base.input_size
    images = describe_dataset(storage.datasets, config.dataset_id)["images"]
    forward = network_forward_cost(base, size)
    return fine_tune_cost(config, images, forward), \
        f"{config.epochs} epochs of {images} images at {size} px, a forward of {base.ref} counting {forward:.3g}"


@router.post("/fine-tune", response_model=Job, status_code=status.HTTP_202_ACCEPTED, dependencies=[ROOM])
def submit_fine_tune(body: FineTuneRequest, request: Request, response: Response, queue: QueueDep,
                     registry: RegistryDep, storage: StorageDep, caller: CallerDep, settings: SettingsDep) -> Job:
    params = body.model_dump()
    with _references_in_body(model="base_model"):
        caller.check_owns(describe_dataset(storage.datasets, body.dataset_id).get("owner"),
                          f"data set {body.dataset_id!r}")
        params["base_model"] = _version_now(registry, body.base_model)
        config = fine_tune_config(params)
        check_fine_tune(config, registry, storage.datasets, settings.worker_memory_bytes, settings.max_classes)
        cost, described = _fine_tune_cost(config, registry, storage)
        check_job_cost(cost, settings.max_job_cost, f"this fine-tune ({described})", "epochs")
    with queue.claim_lock(caller.owner, body.output_model), _dataset_kept(queue, storage, body.dataset_id), \
            _model_kept(queue, registry, params["base_model"], "base_model"):
        claim_model_name(caller, storage, queue, body.output_model, settings)
        return _submit(FINE_TUNE, params, queue, caller, request, settings, response)


@router.post("/sweep", response_model=Job, status_code=status.HTTP_202_ACCEPTED, dependencies=[ROOM])
def submit_sweep(body: SweepRequest, request: Request, response: Response, queue: QueueDep,
                 registry: RegistryDep, storage: StorageDep, caller: CallerDep, settings: SettingsDep) -> Job:
    """Trials of the base fine-tune over `space`, each a fine-tune job with `parent` = the sweep."""
    params = body.model_dump()
    with _references_in_body(dataset="base.dataset_id", model="base.base_model"):
        params["base"]["base_model"] = _version_now(registry, params["base"]["base_model"])
    config = sweep_config(params)
    most_parallel = most_parallel_trials(settings.max_active_jobs_per_client)
    if config.parallel is not None and config.parallel > most_parallel:
        raise InvalidRequest(f"parallel {config.parallel}: a client's jobs queued or running at once are at most "
                             f"{settings.max_active_jobs_per_client} (GAZER_MAX_ACTIVE_JOBS_PER_CLIENT), the sweep "
                             f"one of them, so at most {most_parallel} trials run at once", field="parallel")
    with _references_in_body(dataset="base.dataset_id", model="base.base_model"):
        caller.check_owns(describe_dataset(storage.datasets, config.base.dataset_id).get("owner"),
                          f"data set {config.base.dataset_id!r}")
        costliest = 0
        with _named_in_sweep(params["space"]):
            for trial in checked_trials(params):
                trial_config = fine_tune_config(trial)
                check_fine_tune(trial_config, registry, storage.datasets, settings.worker_memory_bytes,
                                settings.max_classes)
                costliest = max(costliest, _fine_tune_cost(trial_config, registry, storage)[0])
        check_job_cost(config.trials * costliest, settings.max_job_cost,
                       f"this sweep ({config.trials} trials, the costliest {costliest})", "trials")
    with queue.claim_lock(caller.owner, config.base.output_model), \
            _dataset_kept(queue, storage, config.base.dataset_id, "base.dataset_id"), \
            _model_kept(queue, registry, params["base"]["base_model"], "base.base_model"):
        claim_model_name(caller, storage, queue, config.base.output_model, settings)
        return _submit(SWEEP, params, queue, caller, request, settings, response)


@router.post("/activation-maximization", response_model=Job, status_code=status.HTTP_202_ACCEPTED, dependencies=[ROOM])
def submit_activation_maximization(body: ActivationMaximizationRequest, request: Request, response: Response,
                                   queue: QueueDep, registry: RegistryDep, caller: CallerDep,
                                   settings: SettingsDep) -> Job:
    params = body.as_params()
    config = maximization_config(params)
    with _references_in_body():
        model = load_model(registry, config.model, request, caller)
    validate_maximization(config, model.spec, model.layers)
    check_maximization_memory(config, model.spec.input_size, settings.worker_memory_bytes)
    size = config.size or model.spec.input_size
    check_job_cost(maximization_cost(config, network_forward_cost(model.spec, size)), settings.max_job_cost,
                   f"this activation maximization ({config.count} images, {config.steps} steps at {size} px)", "steps")
    with _model_kept(queue, registry, model.spec.ref, "model"):
        return _submit(ACTIVATION_MAXIMIZATION, {**params, "model": model.spec.ref}, queue, caller, request, settings,
                       response)


@router.post("/explain-dataset", response_model=Job, status_code=status.HTTP_202_ACCEPTED, dependencies=[ROOM])
def submit_explain_dataset(body: ExplainDatasetRequest, request: Request, response: Response, queue: QueueDep,
                           registry: RegistryDep, storage: StorageDep, caller: CallerDep,
                           settings: SettingsDep) -> Job:
    """Every image of a data set explained on a worker: predictions, heatmaps (one zip), a CSV,
    per-class mean maps and, with `faithfulness`, deletion and insertion scores."""
    params = body.model_dump()
    with _references_in_body():
        dataset = describe_dataset(storage.datasets, body.dataset_id)
        caller.check_owns(dataset.get("owner"), f"data set {body.dataset_id!r}")
        model = load_model(registry, body.model, request, caller)
    config = explain_dataset_config(params, model)
    check_explain_dataset(config, model, dataset["images"], settings.max_explain_cost, settings.max_explain_job_cost)
    with _dataset_kept(queue, storage, config.dataset_id), _model_kept(queue, registry, model.spec.ref, "model"):
        return _submit(EXPLAIN_DATASET, {**params, "model": model.spec.ref, "method": config.method}, queue, caller,
                       request, settings, response)


@router.get("", response_model=JobList)
def list_jobs(queue: QueueDep, caller: CallerDep,
              state: Annotated[str | None, Query(json_schema_extra={"enum": list(STATES)})] = None,
              type: Annotated[str | None, Query(json_schema_extra={"enum": list(JOB_TYPES)})] = None,
              parent: str | None = None,
              limit: Annotated[int | None, Query(ge=1, le=MAX_TRIALS,
                                                 description="at most this many (default 100; a sweep's trials: "
                                                             "all)")] = None,
              before: Annotated[str | None, Query(max_length=64, description="only jobs older than this one: "
                                                                              "the last page's `next`")] = None,
              ) -> JobList:
    """Newest first: up to `limit` among the next 2000 a caller can see; `parent=ID`: the trials of
    sweep ID, all of them by default. `next`, where the page is full, is the `before` of the next."""
    if type is not None and type not in JOB_TYPES:
        raise InvalidRequest(f"unknown job type {type!r}", field="type", valid=list(JOB_TYPES))
    limit = limit or (100 if parent is None else MAX_TRIALS)
    jobs = queue.store.list(state=state, job_type=type, owner=None if caller.sees_all else caller.owner,
                            parent=parent, limit=limit, before=before)
    return JobList(data=[Job(**job) for job in jobs], count=len(jobs),
                   next=jobs[-1]["id"] if len(jobs) == limit else None)


@router.get("/{job_id}", response_model=Job)
def get_job(job_id: str, queue: QueueDep, caller: CallerDep) -> Job:
    return Job(**_visible_job(job_id, queue, caller))


@router.delete("/{job_id}", response_model=Job, status_code=status.HTTP_202_ACCEPTED)
def cancel_job(job_id: str, queue: QueueDep, caller: CallerDep) -> Job:
    """A queued job ends `cancelled` at once; a running one stops at its next step; one that has
    ended is a 409."""
    record = _visible_job(job_id, queue, caller)
    if record["state"] in TERMINAL:
        raise Conflict(f"job {job_id} has already ended ({record['state']}): there is nothing to cancel")
    return Job(**queue.store.cancel(job_id))


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, request: Request, queue: QueueDep, caller: CallerDep,
                     settings: SettingsDep) -> StreamingResponse:
    """Server-sent events: one `progress` event per change, then `end` with the final record.
    A stream lasts at most `event_stream_seconds`, and ends when the server begins to stop (then
    `expired`: connect again); if the job store cannot be read it ends with `error` (a problem).
    Comments keep idle streams alive."""
    first = await run_in_threadpool(_visible_job, job_id, queue, caller)
    release = request.app.state.event_streams.acquire(client_id(caller, request))

    async def stream() -> AsyncIterator[str]:
        try:
            job, last = first, None
            deadline = time.monotonic() + settings.event_stream_seconds
            quiet_since = time.monotonic()
            pause = FIRST_POLL_SECONDS
            while True:
                snapshot = Job(**job).model_dump_json()  # as GET /v1/jobs/{id} shows it (no owner)
                if snapshot != last:
                    kind = "end" if job["state"] in TERMINAL else "progress"
                    yield f"event: {kind}\ndata: {snapshot}\n\n"
                    last, quiet_since, pause = snapshot, time.monotonic(), FIRST_POLL_SECONDS
                    if kind == "end":
                        return
                else:  # a quiet job (queued, say) is read less and less often
                    pause = min(2 * pause, LONGEST_POLL_SECONDS)
                    if time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                        yield ": still running\n\n"
                        quiet_since = time.monotonic()
                if time.monotonic() > deadline:
                    yield _event("expired", problem(408, "stream-expired", f"event streams last "
                                                    f"{settings.event_stream_seconds:g} s; connect again"))
                    return
                if request.scope.get(SERVER_STOPPING):
                    yield _event("expired", problem(503, "server-stopping", "this server is stopping; connect again "
                                                    "(to it once it is back, or to another)"))
                    return
                await asyncio.sleep(pause)
                if _key_withdrawn(request):
                    yield _event("error", problem(401, "unauthorized", "this stream's API key was revoked, or no "
                                                  "longer holds the scope it needs"))
                    return
                try:
                    job = await run_in_threadpool(queue.store.get, job_id)
                except redis.RedisError as error:
                    yield _event("error", problem(503, "queue-unavailable", f"the job store cannot be read now "
                                                  f"({error}); connect again later"))
                    return
        finally:
            release()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _key_withdrawn(request: Request) -> bool:
    """Whether the key a stream was opened with is gone from the key file, or lost its scope: a
    stream opened before its key was revoked went on for up to an hour, to the job's result."""
    try:
        caller = authenticate(request.app.state.keys, request.headers)
    except Unauthorized:
        return True
    needed = required_scope("GET", request.scope["path"])
    return needed is not None and not caller.grants(needed)


def _event(kind: str, body: Problem) -> str:
    return f"event: {kind}\ndata: {body.model_dump_json(exclude_none=True)}\n\n"


# a job writes a few dozen (a data set's explanation: a few per class); a listing stops here
MAX_ARTIFACTS_LISTED = 10_000


@router.get("/{job_id}/artifacts", response_model=ArtifactList)
def list_artifacts(job_id: str, queue: QueueDep, storage: StorageDep, caller: CallerDep) -> ArtifactList:
    """Every file the job has written so far, by name (a running job's list grows)."""
    _visible_job(job_id, queue, caller)
    folder = storage.job_artifacts(job_id)
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if len(found) == MAX_ARTIFACTS_LISTED:
            break
        if not path.name.startswith(".") and path.is_file():
            found.append(Artifact(name=path.name, url=artifact_url(job_id, path.name), bytes=path.stat().st_size))
    return ArtifactList(data=found, count=len(found))


class ArtifactFile(FileResponse):
    """A Range that does not parse, or whose end comes before its start, is ignored and the whole
    file sent (RFC 9110 14.2), where Starlette answered a plain-text 400."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:
            return []


@router.head("/{job_id}/artifacts/{name}", include_in_schema=False)  # one operation in the schema, one id
@router.get("/{job_id}/artifacts/{name}", response_class=FileResponse)
def get_artifact(job_id: str, name: str, request: Request, queue: QueueDep, storage: StorageDep,
                 caller: CallerDep) -> Response:
    """The file (HEAD: its headers); 304 where `If-None-Match` names its ETag."""
    _visible_job(job_id, queue, caller)
    folder = storage.job_artifacts(job_id)
    path = folder / name
    if name.startswith(".") or len(name) > 255 or Path(name).name != name or not path.is_file():
        raise NotFound(f"job {job_id} has no artifact {name!r}")
    size = (stat := path.stat()).st_size
    response = ArtifactFile(path, stat_result=stat)  # its ETag is known now
    asked = [tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")]
    if response.headers["etag"] in asked or "*" in asked:
        return NotModifiedResponse(response.headers)
    if_range, wanted = request.headers.get("if-range"), request.headers.get("range")
    if wanted is not None and (if_range is None or response._should_use_range(if_range)):
        try:
            ArtifactFile._parse_range_header(wanted, size)
        except RangeNotSatisfiable:  # Starlette's own answer is a plain-text 416
            refused = problem_response(416, "range-not-satisfiable", f"the Range {wanted[:100]!r} starts at or past "
                                                                      f"the end of {name} ({size} bytes)")
            refused.headers["content-range"] = f"bytes */{size}"
            return refused
    return response
