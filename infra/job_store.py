"""Job records in Redis: what was asked, its state, progress, result and error.

The record is the truth for clients. A worker claims a job atomically (queued -> running), so
no job runs twice, and keeps a heartbeat on it; a running job whose heartbeat is older than the
lease is failed as "worker lost" the next time anyone reads it.

Clients take turns. A job's Celery message, once sent, is one turn at a worker: the worker
claims (`claim_next`) the oldest queued job of the turn (a client; a sweep's trials take their
sweep's client's) that was served longest ago, a turn's last service being when a job of it last
started or ended, or for a turn not served lately, when its oldest waiting job was made. So one
client's 16 long jobs, queued first, do not keep everyone else's behind them, and a client
that is new, or new again, goes before older clients only with jobs made before they were last
served. Each job sends one message, so there are as many turns as queued jobs; a message left
over (its job cancelled or discarded, redelivered, or sent again by the API for a job whose
message looked lost: JobQueue.resend_lost_messages) runs a job out of its order or nothing.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import uuid
from contextlib import suppress
from typing import Any

import redis

from core.errors import InvalidRequest, NotFound, ResultTooLarge, TooManyJobs
from core.jobs import STATES, TERMINAL, finite
from schemas.problems import problem

log = logging.getLogger(__name__)

# A Redis command (or connection) that takes longer fails (RedisError: a 503 to the client) rather
# than hold a request, a scrape or a worker's heartbeat for as long as Redis hangs.
REDIS_SOCKET_SECONDS = 10.0
# Readiness probes give up sooner (Kubernetes' after 1 s by default): readiness's reads fail after this.
READINESS_REDIS_SECONDS = 2.0
_INDEX = "gazer:jobs"
# What a client waits before submitting again when it has its limit of jobs queued or running.
RETRY_AFTER_SECONDS = 30
# The most a job's result takes in its record, as JSON. The largest a job makes within its limits is
# about 420 KB (a fine-tune of 1000 classes with 64-character names over 500 epochs; activation
# maximization of 64 targets: 320 KB); one record of 600 MB took Redis, shared by every client, past
# its maxmemory, and then every job's writes failed.
MAX_RESULT_BYTES = 1024**2

def _key(job_id: str) -> str:
    return f"gazer:job:{job_id}"


def _active_key(client: str) -> str:
    """The set of `client`'s queued and running jobs (a sweep's trials are not in it)."""
    return f"gazer:active:{client}"


def _kept_key(client: str) -> str:
    """`client`'s jobs whose records are kept, in any state, by when they were made."""
    return f"gazer:kept:{client}"


def _children_key(parent: str) -> str:
    """The jobs that job `parent` made (a sweep's trials), by when they were made."""
    return f"gazer:children:{parent}"


def _owned_key(owner: str) -> str:
    """API key `owner`'s jobs (a sweep's trials too), by when they were made: what it lists."""
    return f"gazer:owned:{owner}"


_WORKERS = "gazer:workers"  # sorted set: worker name -> when it last said it was alive
_WAITING_TURNS = "gazer:waiting-turns"  # set: the turns (clients) with a job waiting
_ALL_ACTIVE = "gazer:active-jobs"  # set: every queued or running job, trials too
_TURNS = "gazer:turns"  # sorted set: turn -> when a job of it last started or ended
TURNS_REMEMBERED_SECONDS = 2 * 86400  # a turn idle longer than this is forgotten

# Lua shared by the scripts below. They reach job records and waiting sets by names they make
# (gazer:job:ID, gazer:waiting:TURN), as a standalone Redis allows. KEYS[1] and KEYS[2] are
# _WAITING_TURNS and _TURNS in each.
_LUA_COMMON = """
local function record(id) return 'gazer:job:' .. id end
local function waiting(turn) return 'gazer:waiting:' .. turn end
local function turn_of(job) return redis.call('HGET', record(job), 'turn') or '' end
local function leave(job, turn)
  redis.call('ZREM', waiting(turn), job)
  if redis.call('ZCARD', waiting(turn)) == 0 then redis.call('SREM', KEYS[1], turn) end
end
-- queued -> running, its turn served now
local function take(job, turn, now, worker)
  redis.call('HSET', record(job), 'state', 'running', 'started_at', now, 'heartbeat_at', now, 'worker', worker)
  redis.call('HINCRBY', record(job), 'attempts', 1)
  leave(job, turn)
  redis.call('ZADD', KEYS[2], now, turn)
end
"""
# Job ARGV[3], if still queued: ARGV[2]'s now (out of turn); returns 1 when claimed.
# ARGV: now, worker, job id.
_CLAIM = _LUA_COMMON + """
if redis.call('HGET', record(ARGV[3]), 'state') ~= 'queued' then return 0 end
take(ARGV[3], turn_of(ARGV[3]), ARGV[1], ARGV[2])
return 1
"""
# The queued job whose turn it is (see the module's words), claimed for ARGV[2]; false when none.
# A turn's score is when a job of it last started or ended, else when its oldest waiting job was
# made; the lowest wins, then the older job. The message's own job (ARGV[3]) waits first, if it
# is queued and not waiting yet (its submitter failed to say so). Ids that are not queued any
# more leave the waiting sets, and empty sets their turn. ARGV: now, worker, job id, forget before.
_CLAIM_NEXT = _LUA_COMMON + """
local named = redis.call('HMGET', record(ARGV[3]), 'state', 'created_at', 'turn')
if named[1] == 'queued' then
  redis.call('ZADD', waiting(named[3] or ''), 'NX', named[2], ARGV[3])
  redis.call('SADD', KEYS[1], named[3] or '')
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
local best_turn, best_job, best_score, best_made
for _, turn in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local job, made
  while true do
    local first = redis.call('ZRANGE', waiting(turn), 0, 0, 'WITHSCORES')
    if #first == 0 then break end
    if redis.call('HGET', record(first[1]), 'state') == 'queued' then
      job, made = first[1], tonumber(first[2])
      break
    end
    redis.call('ZREM', waiting(turn), first[1])
  end
  if job == nil then
    redis.call('SREM', KEYS[1], turn)
  else
    local score = tonumber(redis.call('ZSCORE', KEYS[2], turn) or made)
    if best_job == nil or score < best_score or (score == best_score and made < best_made) then
      best_turn, best_job, best_score, best_made = turn, job, score, made
    end
  end
end
if best_job == nil then return false end
take(best_job, best_turn, ARGV[1], ARGV[2])
return best_job
"""
# Job ARGV[1], made at ARGV[2], waits for its turn, if it is still queued.
_WAIT = _LUA_COMMON + """
if redis.call('HGET', record(ARGV[1]), 'state') ~= 'queued' then return 0 end
local turn = turn_of(ARGV[1])
redis.call('ZADD', waiting(turn), 'NX', ARGV[2], ARGV[1])
redis.call('SADD', KEYS[1], turn)
return 1
"""
# Running on worker ARGV[2], and not asked to cancel -> queued again, to run afresh; 1 when so.
# ARGV: job id, worker.
_REQUEUE = _LUA_COMMON + """
local job = redis.call('HMGET', record(ARGV[1]), 'state', 'worker', 'cancel_requested')
if job[1] ~= 'running' or job[2] ~= ARGV[2] or job[3] == '1' then return 0 end
redis.call('HSET', record(ARGV[1]), 'state', 'queued', 'progress', '{"fraction": 0.0}')
redis.call('HDEL', record(ARGV[1]), 'started_at', 'heartbeat_at', 'worker')
return 1
"""
# Queued or running -> a terminal state (a reaped, cancelled or finished job stays as it is): it
# leaves its client's active set (KEYS[3], when it has one) and its waiting set; a job that ran
# serves its turn now. ARGV: state, now, result, error, job id, and '' or a time: then only a job
# running with no heartbeat since (a reap, which read the record before a heartbeat or a new claim).
_FINISH = _LUA_COMMON + """
local state = redis.call('HGET', record(ARGV[5]), 'state')
if state ~= 'running' and state ~= 'queued' then return 0 end
if ARGV[6] ~= '' and (state ~= 'running' or
    tonumber(redis.call('HGET', record(ARGV[5]), 'heartbeat_at') or '0') > tonumber(ARGV[6])) then return 0 end
redis.call('HSET', record(ARGV[5]), 'state', ARGV[1], 'finished_at', ARGV[2], 'result', ARGV[3], 'error', ARGV[4])
if KEYS[3] then redis.call('SREM', KEYS[3], ARGV[5]) end
local turn = turn_of(ARGV[5])
leave(ARGV[5], turn)
if state == 'running' then redis.call('ZADD', KEYS[2], ARGV[2], turn) end
return 1
"""


class JobStore:
    def __init__(self, client: redis.Redis, lease_seconds: float, max_result_bytes: int = MAX_RESULT_BYTES) -> None:
        self.redis = client
        # the same Redis for readiness, on connections of their own whose reads give up sooner
        # (no connection is made until one is used)
        pool = client.connection_pool
        self.quick = redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class,
            **{**pool.connection_kwargs, "socket_timeout": READINESS_REDIS_SECONDS,
               "socket_connect_timeout": READINESS_REDIS_SECONDS}))
        self.lease_seconds = lease_seconds
        self.max_result_bytes = max_result_bytes
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._claim_next = client.register_script(_CLAIM_NEXT)
        self._wait = client.register_script(_WAIT)
        self._requeue = client.register_script(_REQUEUE)

    @classmethod
    def from_url(cls, url: str, lease_seconds: float) -> "JobStore":
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=REDIS_SOCKET_SECONDS,
                                        socket_connect_timeout=REDIS_SOCKET_SECONDS), lease_seconds)

    def create(self, job_type: str, params: dict[str, Any], owner: str | None = None,
               parent: str | None = None, client: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """A `queued` record, in one transaction with its index entry. `owner`: the API key id;
        `parent`: the job that made this one (a sweep, for its trials); `client`: whom the job
        counts against, TooManyJobs when it already has `limit` jobs queued or running. Its turn
        (see the module's words) is its client's, or its parent's."""
        job_id = uuid.uuid4().hex
        turn = client or (self.redis.hget(_key(parent), "turn") if parent else None) or ""
        fields = {"id": job_id, "type": job_type, "state": "queued", "params": json.dumps(params),
                  "progress": json.dumps({"fraction": 0.0}), "created_at": time.time(), "attempts": 0,
                  "owner": owner or "", "parent": parent or "", "client": client or "", "turn": turn}
        if not self._add(fields, client, limit):
            self.active_jobs(client)  # drops jobs that ended unseen (a lost worker's), then once more
            if not self._add(fields, client, limit):
                raise TooManyJobs(f"this client has {limit} jobs queued or running, its limit "
                                  f"(GAZER_MAX_ACTIVE_JOBS_PER_CLIENT); submit again when one ends, or cancel one",
                                  headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return self.get(job_id)

    def _add(self, fields: dict[str, Any], client: str | None, limit: int | None) -> bool:
        """The record, its index entry and its place in the client's active set, in one
        transaction; nothing (False) when the client has `limit` jobs there already."""
        active = _active_key(client) if client else None

        def write(transaction: redis.client.Pipeline) -> bool:
            if active and limit is not None and transaction.scard(active) >= limit:
                return False
            transaction.multi()
            transaction.hset(_key(fields["id"]), mapping=fields)
            transaction.zadd(_INDEX, {fields["id"]: fields["created_at"]})
            transaction.sadd(_ALL_ACTIVE, fields["id"])
            if fields["owner"]:
                transaction.zadd(_owned_key(fields["owner"]), {fields["id"]: fields["created_at"]})
            if fields["parent"]:
                transaction.zadd(_children_key(fields["parent"]), {fields["id"]: fields["created_at"]})
            if active:
                transaction.sadd(active, fields["id"])
                transaction.zadd(_kept_key(client), {fields["id"]: fields["created_at"]})
            return True

        return self.redis.transaction(write, *([active] if active else []), value_from_callable=True)

    def active_jobs(self, client: str | None = None) -> list[dict[str, Any]]:
        """`client`'s queued and running jobs, or every one (however old, where a listing reads
        the newest); on the way, a running one whose lease ran out is failed as lost, and ids
        whose record ended or is gone leave the set."""
        active_set = _ALL_ACTIVE if client is None else _active_key(client)
        job_ids = sorted(self.redis.smembers(active_set))
        with self.redis.pipeline(transaction=False) as reads:
            for job_id in job_ids:
                reads.hgetall(_key(job_id))
            records = reads.execute()
        active = []
        for job_id, raw in zip(job_ids, records):
            job = self._current(job_id, raw) if raw else None
            if job is None or job["state"] in TERMINAL:
                self.redis.srem(active_set, job_id)
            else:
                active.append(job)
        return active

    def discard(self, job_id: str) -> None:
        """Remove a record whose message could not be sent, so that no job waits for nothing;
        unless a worker has claimed it (the message was sent after all): then it runs."""
        def unqueue(transaction: redis.client.Pipeline) -> bool:
            if transaction.hget(_key(job_id), "state") != "queued":
                return False
            transaction.multi()
            transaction.hset(_key(job_id), "state", "cancelled")  # no worker claims it from here
            return True

        if self.redis.transaction(unqueue, _key(job_id), value_from_callable=True):
            client = self.redis.hget(_key(job_id), "client")
            self._delete({job_id: client})
            if client:
                self.redis.srem(_active_key(client), job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        raw = self.redis.hgetall(_key(job_id))
        if not raw:
            raise NotFound(f"no job {job_id!r}")
        return self._current(job_id, raw)

    def _current(self, job_id: str, raw: dict[str, str]) -> dict[str, Any]:
        """The record, failed first as worker-lost if it runs with an expired lease."""
        if raw["state"] == "running" and time.time() - float(raw.get("heartbeat_at", 0)) > self.lease_seconds:
            if self.finish(job_id, "failed", error=problem(
                    500, "worker-lost", "the worker running this job stopped (killed or crashed) without finishing "
                                        "it; submit the job again").model_dump(exclude_none=True),
                           silent_since=time.time() - self.lease_seconds):
                log.warning("job %s (%s) failed as lost: its worker %s sent no heartbeat for %.0f s", job_id,
                            raw["type"], raw.get("worker", "?"), time.time() - float(raw.get("heartbeat_at", 0)))
            raw = self.redis.hgetall(_key(job_id))
        return self._decode(raw)

    @staticmethod
    def _decode(raw: dict[str, str]) -> dict[str, Any]:
        job: dict[str, Any] = {"id": raw["id"], "type": raw["type"], "state": raw["state"],
                               "owner": raw.get("owner") or None, "parent": raw.get("parent") or None,
                               "attempts": int(raw.get("attempts", 0)),
                               "cancel_requested": raw.get("cancel_requested") == "1"}
        for name in ("params", "progress", "result", "error"):
            job[name] = json.loads(raw[name]) if raw.get(name) else None
        for name in ("created_at", "started_at", "finished_at"):
            job[name] = float(raw[name]) if raw.get(name) else None
        return job

    def list(self, state: str | None = None, job_type: str | None = None, limit: int = 100,
             owner: str | None = None, parent: str | None = None, scanned: int | None = 2000,
             before: str | None = None) -> list[dict[str, Any]]:
        """Newest first, older than job `before` where given (the last of a page); only `owner`'s
        when given, read from its own set rather than from every job, and only `parent`'s trials,
        from the sweep's own set, all of them however old; 100 ids at a time, their records in one
        round trip, among the `scanned` next (a filter that matches nothing reads no further)."""
        if state is not None and state not in STATES:
            raise InvalidRequest(f"unknown state {state!r}", field="state", valid=list(STATES))
        if parent is not None:
            index, scanned = _children_key(parent), None
        else:
            index = _INDEX if owner is None else _owned_key(owner)
        newest = "+inf"
        if before is not None:
            if (created_at := self.redis.zscore(index, before)) is None:
                raise InvalidRequest(f"no job {before[:100]!r} among those listed here: `before` takes the id of a "
                                     f"listed job (a page's `next`)", field="before")
            newest = f"({created_at!r}"
        jobs: list[dict[str, Any]] = []
        start = 0
        while len(jobs) < limit and (scanned is None or start < scanned) and \
                (job_ids := self.redis.zrevrangebyscore(index, newest, "-inf", start=start, num=100)):
            start += 100
            with self.redis.pipeline(transaction=False) as reads:
                for job_id in job_ids:
                    reads.hgetall(_key(job_id))
                records = reads.execute()
            for job_id, raw in zip(job_ids, records):
                if not raw:
                    if owner is not None:  # its record went another way (Redis's maxmemory, by hand)
                        self.redis.zrem(index, job_id)
                    continue
                job = self._current(job_id, raw)
                if (state is None or job["state"] == state) and (job_type is None or job["type"] == job_type) \
                        and (owner is None or job["owner"] == owner) and (parent is None or job["parent"] == parent):
                    jobs.append(job)
        return jobs[:limit]

    def index_jobs(self) -> int:
        """Puts every job of an owner in its owner's set, every trial in its sweep's, and every
        queued or running job in the set of them all, again (it changes nothing there): jobs made
        before those sets existed, or by an older process during an upgrade. Returns how many jobs
        have an owner."""
        indexed = 0
        entries = self.redis.zscan_iter(_INDEX, count=1000)  # a cursor: jobs deleted meanwhile skip no others
        while page := list(itertools.islice(entries, 1000)):
            with self.redis.pipeline(transaction=False) as reads:
                for job_id, _ in page:
                    reads.hmget(_key(job_id), "owner", "parent", "state")
                found = reads.execute()
            with self.redis.pipeline(transaction=False) as writes:
                for (job_id, created_at), (owner, parent, state) in zip(page, found):
                    if state in ("queued", "running"):
                        writes.sadd(_ALL_ACTIVE, job_id)
                    if owner:
                        writes.zadd(_owned_key(owner), {job_id: created_at})
                        indexed += 1
                    if parent:
                        writes.zadd(_children_key(parent), {job_id: created_at})
                writes.execute()
        return indexed

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(_key(job_id)))

    def count(self) -> int:
        return self.redis.zcard(_INDEX)

    def summaries(self, limit: int) -> list[dict[str, str]]:
        """type, state, started_at and finished_at of the newest `limit` jobs; one round trip
        for the records. A running job whose lease ran out is failed as lost first, as any read
        of it would (a dashboard showed a killed worker's job running until someone read it)."""
        fields = ("type", "state", "started_at", "finished_at", "heartbeat_at")
        job_ids = self.redis.zrevrange(_INDEX, 0, limit - 1)
        with self.redis.pipeline(transaction=False) as reads:
            for job_id in job_ids:
                reads.hmget(_key(job_id), fields)
            rows = [dict(zip(fields, row)) for row in reads.execute()]
        now = time.time()
        for job_id, row in zip(job_ids, rows):
            if row["state"] == "running" and now - float(row["heartbeat_at"] or 0) > self.lease_seconds:
                with suppress(NotFound):
                    job = self.get(job_id)
                    row.update(state=job["state"], finished_at=str(job["finished_at"] or ""))
        return [row for row in rows if row["type"] is not None]

    def wait_for_turn(self, job: dict[str, Any]) -> None:
        """Job `job` (as `create` returned it), its message sent, waits for its turn (see the
        module's words). Not before its message is sent: a worker could take its turn, and a job
        whose message failed is discarded. Should this fail, its message makes it wait."""
        self._wait(keys=[_WAITING_TURNS, _TURNS], args=[job["id"], job["created_at"]])

    def waiting(self, limit: int) -> list[str]:
        """Up to `limit` jobs waiting for their turn, oldest first; an id whose job has just been
        claimed or ended may be among them."""
        found: list[tuple[float, str]] = []
        for turn in self.redis.smembers(_WAITING_TURNS):
            oldest = self.redis.zrange(f"gazer:waiting:{turn}", 0, limit - 1, withscores=True)
            found += [(created_at, job_id) for job_id, created_at in oldest]
        return [job_id for _, job_id in sorted(found)[:limit]]

    def claim(self, job_id: str, worker: str) -> bool:
        """Job `job_id`, if still queued, is `worker`'s now, out of turn."""
        return bool(self._claim(keys=[_WAITING_TURNS, _TURNS], args=[time.time(), worker, job_id]))

    def claim_next(self, job_id: str, worker: str) -> str | None:
        """On a message for job `job_id`: the queued job whose turn it is (see the module's
        words), now `worker`'s; None when no job is queued."""
        now = time.time()
        return self._claim_next(keys=[_WAITING_TURNS, _TURNS],
                                args=[now, worker, job_id, now - TURNS_REMEMBERED_SECONDS])

    def requeue(self, job_id: str, worker: str) -> bool:
        """Job `job_id`, running on `worker`, queued again to run afresh (its worker is stopping);
        False where it is not so, or its client asked to cancel it. Its message must be sent,
        then `wait_for_turn`."""
        return bool(self._requeue(keys=[_WAITING_TURNS, _TURNS], args=[job_id, worker]))

    def heartbeat(self, job_id: str) -> None:
        self.redis.hset(_key(job_id), "heartbeat_at", time.time())

    def report_progress(self, job_id: str, fraction: float, **details: Any) -> None:
        progress = {"fraction": round(max(0.0, min(1.0, fraction)), 4), **details}
        self.redis.hset(_key(job_id), mapping={"progress": json.dumps(finite(progress)), "heartbeat_at": time.time()})

    def finish(self, job_id: str, state: str, result: Any = None, error: dict[str, Any] | None = None,
               silent_since: float | None = None) -> bool:
        """The job's end, unless it had ended already (False); the jobs it made that have not
        ended (a sweep's trials: lost with its worker, cancelled while back in the queue, crashed)
        are cancelled, since nothing would collect them. `silent_since`: only if it is running
        with no heartbeat since then (else False). A result over `max_result_bytes` of JSON is
        not written: ResultTooLarge, the record left as it was. NaN and infinities (in progress
        too) are written as null: JSON has no such numbers."""
        assert state in TERMINAL
        encoded = json.dumps(finite(result)) if result is not None else ""
        if len(encoded) > self.max_result_bytes:
            raise ResultTooLarge(f"the job's result is {len(encoded)} bytes of JSON, and a job's record holds at most "
                                 f"{self.max_result_bytes}: ask for less (fewer targets, steps or classes)")
        client = self.redis.hget(_key(job_id), "client")  # set once, at create
        ended = bool(self._finish(keys=[_WAITING_TURNS, _TURNS] + ([_active_key(client)] if client else []), args=[
            state, time.time(), encoded, json.dumps(error) if error is not None else "", job_id,
            "" if silent_since is None else repr(silent_since)]))
        if ended:
            self.redis.srem(_ALL_ACTIVE, job_id)  # else when read (a crash between): the set stays their size
            for child in self.redis.zrange(_children_key(job_id), 0, -1):
                self.cancel(child)
        return ended

    def cancel(self, job_id: str) -> dict[str, Any]:
        """A queued job is cancelled at once; a running one stops at its next step."""
        job = self.get(job_id)
        if job["state"] == "queued":
            self.finish(job_id, "cancelled")
        elif job["state"] == "running":
            self.redis.hset(_key(job_id), "cancel_requested", "1")
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(_key(job_id), "cancel_requested") == "1"

    def expire_finished(self, finished_before: float, limit: int = 1000) -> list[str]:
        """Deletes up to `limit` records of jobs that ended before `finished_before` (oldest
        created first), and index entries whose record is gone; returns their ids."""
        candidates = self.redis.zrangebyscore(_INDEX, "-inf", finished_before, start=0, num=limit)
        if not candidates:
            return []
        with self.redis.pipeline(transaction=False) as reads:
            for job_id in candidates:
                reads.hmget(_key(job_id), ("state", "finished_at", "client"))
            rows = reads.execute()
        expired = {job_id: client for job_id, (state, finished_at, client) in zip(candidates, rows)
                   if state is None or (state in TERMINAL and float(finished_at or 0) < finished_before)}
        return self._delete(expired)

    def trim_finished(self, client: str, keep: int) -> list[str]:
        """Deletes the records of `client`'s oldest ended jobs until it keeps at most `keep`;
        returns their ids. Jobs still queued or running are never taken."""
        kept = _kept_key(client)
        excess = self.redis.zcard(kept) - keep
        if excess <= 0:
            return []
        candidates = self.redis.zrange(kept, 0, excess + self.redis.scard(_active_key(client)) - 1)
        with self.redis.pipeline(transaction=False) as reads:
            for job_id in candidates:
                reads.hget(_key(job_id), "state")
            states = reads.execute()
        ended = [job_id for job_id, state in zip(candidates, states) if state is None or state in TERMINAL]
        return self._delete({job_id: client for job_id in ended[:excess]})

    def _delete(self, records: dict[str, str | None]) -> list[str]:
        """Job id -> its client: the records, their index entries and their place among the
        client's, the owner's and the parent's, with the ended jobs each one made (a sweep's
        trials, which count against no client); returns the ids of every record deleted."""
        if not records:
            return []
        records = {**records, **self._ended_children(records)}
        with self.redis.pipeline(transaction=False) as reads:
            for job_id in records:
                reads.hmget(_key(job_id), ("owner", "parent"))
            rows = reads.execute()
        with self.redis.pipeline(transaction=True) as writes:
            writes.delete(*[_key(job_id) for job_id in records], *[_children_key(job_id) for job_id in records])
            writes.zrem(_INDEX, *records)
            for (job_id, client), (owner, parent) in zip(records.items(), rows):
                if client:
                    writes.zrem(_kept_key(client), job_id)
                if owner:
                    writes.zrem(_owned_key(owner), job_id)
                if parent:
                    writes.zrem(_children_key(parent), job_id)
            writes.execute()
        return list(records)

    def _ended_children(self, parents: dict[str, str | None]) -> dict[str, None]:
        """The jobs that `parents` made and that have ended (a trial still running keeps its
        record until retention takes it)."""
        with self.redis.pipeline(transaction=False) as reads:
            for job_id in parents:
                reads.zrange(_children_key(job_id), 0, -1)
            children = [child for made in reads.execute() for child in made if child not in parents]
        if not children:
            return {}
        with self.redis.pipeline(transaction=False) as reads:
            for child in children:
                reads.hget(_key(child), "state")
            states = reads.execute()
        return {child: None for child, state in zip(children, states) if state is None or state in TERMINAL}

    def worker_alive(self, worker: str) -> None:
        self.redis.zadd(_WORKERS, {worker: time.time()})

    def worker_gone(self, worker: str) -> None:
        self.redis.zrem(_WORKERS, worker)

    def live_workers(self, client: redis.Redis | None = None) -> list[str]:
        """Workers heard from within the lease; older entries are dropped on the way. `client`:
        another connection to the same Redis (`quick`)."""
        client = client or self.redis
        cutoff = time.time() - self.lease_seconds
        client.zremrangebyscore(_WORKERS, "-inf", cutoff)
        return client.zrangebyscore(_WORKERS, cutoff, "+inf")

    def close(self) -> None:
        self.redis.close()
        self.quick.close()

    def should_stop(self, job_id: str, worker: str) -> bool:
        """Whether the job running on `worker` must stop: cancelled, reaped as lost (its lease ran
        out), or claimed again by another worker since. One read per step; the whole record only
        when the lease has run out (it is then reaped here, as any reader would)."""
        state, cancel, claimed_by, beat = self.redis.hmget(
            _key(job_id), ("state", "cancel_requested", "worker", "heartbeat_at"))
        if state == "running" and time.time() - float(beat or 0) > self.lease_seconds:
            state = self.get(job_id)["state"]
        return cancel == "1" or state != "running" or claimed_by != worker
