"""Long jobs: submit (202 + Location), poll, follow as server-sent events, cancel, artifacts."""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from fastapi import APIRouter, Response, status
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from core.errors import InvalidRequest, NotFound
from core.job_runners import ACTIVATION_MAXIMIZATION, FINE_TUNE, check_fine_tune, fine_tune_config, \
    maximization_config
from core.jobs import TERMINAL
from core.visualize.activation_max import validate as validate_maximization
from schemas.jobs import ActivationMaximizationRequest, FineTuneRequest, Job, JobList
from service.dependencies import QueueDep, RegistryDep, StorageDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@contextmanager
def _references_in_body() -> Iterator[None]:
    """An unknown model or data set named in a request body is a 422, not a 404."""
    try:
        yield
    except NotFound as error:
        raise InvalidRequest(error.detail) from None


def _accepted(job: dict[str, Any], response: Response) -> Job:
    response.headers["Location"] = f"/v1/jobs/{job['id']}"
    return Job(**job)


@router.post("/fine-tune", response_model=Job, status_code=status.HTTP_202_ACCEPTED)
def submit_fine_tune(request: FineTuneRequest, response: Response, queue: QueueDep, registry: RegistryDep,
                     storage: StorageDep) -> Job:
    params = request.model_dump()
    with _references_in_body():
        check_fine_tune(fine_tune_config(params), registry, storage.datasets)
    return _accepted(queue.submit(FINE_TUNE, params), response)


@router.post("/activation-maximization", response_model=Job, status_code=status.HTTP_202_ACCEPTED)
def submit_activation_maximization(request: ActivationMaximizationRequest, response: Response, queue: QueueDep,
                                   registry: RegistryDep) -> Job:
    params = request.as_params()
    config = maximization_config(params)
    with _references_in_body():
        model = registry.get(config.model)
    validate_maximization(config, model.spec, model.layers)
    return _accepted(queue.submit(ACTIVATION_MAXIMIZATION, params), response)


@router.get("", response_model=JobList)
def list_jobs(queue: QueueDep, state: str | None = None, type: str | None = None) -> JobList:
    jobs = queue.store.list(state=state, job_type=type)
    return JobList(data=[Job(**job) for job in jobs], count=len(jobs))


@router.get("/{job_id}", response_model=Job)
def get_job(job_id: str, queue: QueueDep) -> Job:
    return Job(**queue.store.get(job_id))


@router.delete("/{job_id}", response_model=Job, status_code=status.HTTP_202_ACCEPTED)
def cancel_job(job_id: str, queue: QueueDep) -> Job:
    """A queued job ends `cancelled` at once; a running one stops at its next step."""
    return Job(**queue.store.cancel(job_id))


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, queue: QueueDep) -> StreamingResponse:
    """Server-sent events: one `progress` event per change, then `end` with the final record."""
    first = await run_in_threadpool(queue.store.get, job_id)

    async def stream() -> AsyncIterator[str]:
        job, last = first, None
        while True:
            snapshot = json.dumps(job)
            if snapshot != last:
                kind = "end" if job["state"] in TERMINAL else "progress"
                yield f"event: {kind}\ndata: {snapshot}\n\n"
                last = snapshot
                if kind == "end":
                    return
            await asyncio.sleep(0.25)
            job = await run_in_threadpool(queue.store.get, job_id)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/{job_id}/artifacts/{name}")
def get_artifact(job_id: str, name: str, queue: QueueDep, storage: StorageDep) -> FileResponse:
    queue.store.get(job_id)
    folder = storage.job_artifacts(job_id)
    path = folder / name
    if name.startswith(".") or Path(name).name != name or not path.is_file():
        raise NotFound(f"job {job_id} has no artifact {name!r}")
    return FileResponse(path)
