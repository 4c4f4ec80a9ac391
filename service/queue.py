"""The API's side of the job queue: job records in Redis and Celery messages by task name."""

from __future__ import annotations

import asyncio
import logging
import shutil
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any, Iterator

import redis
from celery import Celery
from starlette.concurrency import run_in_threadpool

from core.errors import ServiceBusy, StorageFailed
from core.storage import Storage
from infra.celery_config import RUN_JOB_TASK, celery_config
from infra.job_metrics import queue_depth
from infra.job_store import JobStore


log = logging.getLogger(__name__)
JOB_STORE_FULL = ("the job store is full (Redis reached its maxmemory); finished jobs must expire or be deleted "
                  "before new ones are taken")
CLAIM_LOCK_SECONDS = 30  # how long a claim lock is held at most, and waited for
LOST_MESSAGE_SECONDS = 60.0  # how often the API looks for jobs that lost their message
_RESEND_LOCK = "gazer:resend-lock"
_STRANDED = "gazer:stranded"  # the jobs waiting with no message in the queue at the last look
MOST_RESENT = 1000


class QueueUnavailable(ServiceBusy):
    code = "queue-unavailable"


class JobQueue:
    def __init__(self, redis_url: str, lease_seconds: float, visibility_timeout: float) -> None:
        self.store = JobStore.from_url(redis_url, lease_seconds)
        self.celery = Celery("gazer-api")
        self.celery.conf.update(celery_config(redis_url, visibility_timeout))

    def submit(self, job_type: str, params: dict[str, Any], owner: str | None, client: str,
               limit: int, keep: int, storage: Storage) -> dict[str, Any]:
        """The record and its message both exist, or neither does (503); 429 when `client`
        already has `limit` jobs queued or running. Once the job is queued, where `client` keeps
        more than `keep` job records, its oldest ended jobs go, their artifacts too."""
        try:
            job = self.store.create(job_type, params, owner, client=client, limit=limit)
        except redis.OutOfMemoryError:
            raise StorageFailed(JOB_STORE_FULL) from None
        except redis.RedisError as error:
            raise QueueUnavailable(f"the job queue cannot take jobs now: {error}") from None
        try:
            self.celery.send_task(RUN_JOB_TASK, args=[job["id"]])
        except Exception as error:  # kombu's and redis's connection errors alike
            try:
                self.store.discard(job["id"])
            except redis.RedisError:
                log.error("job %s: its message was not sent and its record could not be removed", job["id"])
            raise QueueUnavailable(f"the job queue cannot take jobs now: {error}") from None
        with suppress(redis.RedisError):  # else it waits from when a worker receives its message
            self.store.wait_for_turn(job)
        try:  # after the job is queued: a refused submit takes nothing away
            for job_id in self.store.trim_finished(client, keep):
                shutil.rmtree(storage.job_artifacts(job_id), ignore_errors=True)
        except redis.RedisError:
            log.exception("jobs of %s could not be trimmed; the next submit tries again", client)
        return job

    @contextmanager
    def claim_lock(self, owner: str | None, name: str | None = None) -> Iterator[None]:
        """Held, over all API processes, while a request of key `owner` checks its quota, claims
        model name `name` and queues the job (or marks the upload) that will hold it, so that no
        other request sees the claim without its holder, nor counts the key's names halfway. An
        open service (no owner) has no claims and takes no lock."""
        if owner is None:
            yield
            return
        with self._lock(f"gazer:owner-lock:{owner}", "another request of this key"), \
                (self.name_lock(name) if name is not None else nullcontext()):
            yield

    def name_lock(self, name: str, wait: bool = True) -> AbstractContextManager[None]:
        """Model name `name`'s part of claim_lock (taken after the key's, by whoever holds that).
        `wait=False`: QueueUnavailable at once when another request holds it."""
        return self._lock(f"gazer:model-name-lock:{name}", f"another submit under model name {name!r}", wait)

    def dataset_lock(self, dataset_id: str) -> AbstractContextManager[None]:
        """Held while a job that reads data set `dataset_id` is queued, and while a delete looks
        for such jobs and sets the data set aside: the delete sees the job, or the job sees no
        data set. Taken after claim_lock's, by whoever holds that."""
        return self._lock(f"gazer:dataset-lock:{dataset_id}", f"another request on data set {dataset_id!r}")

    def model_lock(self, name: str) -> AbstractContextManager[None]:
        """Held while a job that reads a version of model `name` is queued, and while a delete
        looks for such jobs and deletes: the delete sees the job, or the job sees no version.
        Taken after claim_lock's and dataset_lock's, by whoever holds those."""
        return self._lock(f"gazer:model-read-lock:{name}", f"another request on model {name!r}")

    @contextmanager
    def _lock(self, key: str, holder: str, wait: bool = True) -> Iterator[None]:
        lock = self.store.redis.lock(key, timeout=CLAIM_LOCK_SECONDS, blocking_timeout=CLAIM_LOCK_SECONDS)
        try:
            acquired = lock.acquire(blocking=wait)
        except redis.OutOfMemoryError:  # a lock is a write too
            raise StorageFailed(JOB_STORE_FULL) from None
        except redis.RedisError as error:
            raise QueueUnavailable(f"the job queue cannot take jobs now, nor tell which jobs hold what: Redis, which "
                                   f"holds its locks, cannot be reached ({error})") from None
        if not acquired:
            raise QueueUnavailable(f"{holder} is still in progress; retry")
        try:
            yield
        finally:
            with suppress(redis.RedisError):  # it expires by itself
                lock.release()

    def active_jobs(self, client: str | None = None) -> list[dict[str, Any]]:
        """`client`'s queued and running jobs, or everyone's (503 when Redis cannot be read)."""
        try:
            return self.store.active_jobs(client)
        except redis.RedisError as error:
            raise QueueUnavailable(f"the job queue cannot be read now: {error}") from None

    def jobs_using_dataset(self, dataset_id: str) -> list[dict[str, Any]]:
        """The queued and running jobs (their records) that read data set `dataset_id` (fine-tunes,
        sweeps and their trials, data set explanations), however old: read from the newest 2,000
        records, a job submitted before 2,000 others was missed, and its data set deleted under it."""
        active = self.active_jobs()
        return [job for job in active
                if dataset_id in (job["params"].get("dataset_id"), (job["params"].get("base") or {}).get("dataset_id"))]

    def jobs_using_model(self, name: str, version: int | None) -> list[dict[str, Any]]:
        """The queued and running jobs (their records) that read model `name` (that version; None: any): fine-tunes
        and sweeps from it, its activation maximizations and data set explanations. Their
        references are NAME@VERSION, resolved at submit."""
        active = self.active_jobs()
        return [job for job in active if any(_reads(ref, name, version) for ref in _model_references(job["params"]))]

    def resend_lost_messages(self, period: float = LOST_MESSAGE_SECONDS) -> int:
        """Each job sends one message, and a message runs whichever job's turn it is, so while
        jobs wait there are messages in the queue, or in a worker's hands on their way to a
        claim, which takes milliseconds. A job seen waiting at two looks in a row (one look per
        half `period` among API processes), each with no message in the queue, lost its message
        (its worker died between taking it and claiming, or Redis lost it) and would wait for the
        visibility timeout, a week: it gets one again. A message too many does no harm: with no
        job waiting it runs nothing. The count sent."""
        client = self.store.redis
        if not client.set(_RESEND_LOCK, "1", nx=True, ex=max(1, round(period / 2))):
            return 0  # another API process has just looked
        if queue_depth(client) > 0:
            client.delete(_STRANDED)
            return 0
        waiting = self.store.waiting(MOST_RESENT)
        seen_before = client.smembers(_STRANDED)
        stranded = [job_id for job_id in waiting if job_id in seen_before]
        with client.pipeline() as writes:
            writes.delete(_STRANDED)
            if waiting:
                writes.sadd(_STRANDED, *waiting)
                writes.expire(_STRANDED, max(1, round(3 * period)))
            writes.execute()
        for job_id in stranded:
            self.celery.send_task(RUN_JOB_TASK, args=[job_id])
        if stranded:
            log.warning("%d jobs waited with no message in the queue (a worker died holding one, or Redis lost "
                        "them); sent them again", len(stranded))
        return len(stranded)

    def close(self) -> None:
        self.celery.close()
        self.store.close()


async def resend_lost_messages_forever(queue: JobQueue) -> None:
    while True:
        await asyncio.sleep(LOST_MESSAGE_SECONDS)
        try:
            await run_in_threadpool(queue.resend_lost_messages)
        except Exception:  # Redis away: the next round tries again
            log.exception("lost job messages could not be looked for")


def _model_references(params: dict[str, Any]) -> list[object]:
    return [params.get("base_model"), params.get("model"), (params.get("base") or {}).get("base_model")]


def _reads(ref: object, name: str, version: int | None) -> bool:
    if not isinstance(ref, str):
        return False
    read_name, _, read_version = ref.partition("@")
    return read_name == name and (version is None or read_version == str(version))
