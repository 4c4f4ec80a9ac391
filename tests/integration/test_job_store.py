"""The job index on a real redis-server: listing pages through it, newest first, and a key's
through its own jobs; each client's queued and running jobs, counted against its limit; the
records each client keeps; clients taking turns at the workers."""

from __future__ import annotations

import json
import threading
import time

import pytest

from core.errors import InvalidRequest, TooManyJobs
from core.job_runners import JobContext
from core.jobs import JobCancelled
from core.storage import Storage
from infra.embedded_redis import EmbeddedRedis
from infra.job_store import JobStore
from infra.sweeps import SweepHost, run_sweep
from service.queue import JobQueue
from worker import tasks
from worker.metrics import WorkerMetrics


def test_listing_reads_past_the_first_page_and_filters(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = JobStore.from_url(server.url, lease_seconds=60)
        created = [store.create("fine_tune" if index % 3 else "activation_maximization", {"n": index})
                   for index in range(250)]
        newest_first = [job["id"] for job in reversed(created)]
        assert [job["id"] for job in store.list(limit=180)] == newest_first[:180]
        maximizations = store.list(job_type="activation_maximization", limit=1000)
        assert [job["params"]["n"] for job in maximizations] == [n for n in range(249, -1, -1) if n % 3 == 0]
        store.redis.delete(f"gazer:job:{created[-1]['id']}")  # an index entry whose record is gone
        assert store.list(limit=1)[0]["id"] == created[-2]["id"]
        # a filter that matches little reads no further than `scanned` records
        assert len(store.list(job_type="activation_maximization", limit=1000, scanned=100)) == 33
        assert store.list(job_type="nothing-matches", scanned=100) == []
        # a page at a time: each older than the last of the one before, to the oldest
        pages, before = [], None
        while page := store.list(limit=100, before=before):
            pages.append([job["id"] for job in page])
            before = page[-1]["id"]
        assert [len(page) for page in pages] == [100, 100, 49] and sum(pages, []) == newest_first[1:]
        assert [job["params"]["n"] for job in store.list(job_type="activation_maximization", limit=2,
                                                           before=created[200]["id"])] == [198, 195]
        with pytest.raises(InvalidRequest, match="no job 'nope' among those listed here"):
            store.list(before="nope")



def test_nan_and_infinities_are_stored_as_null_so_every_record_and_event_is_json(tmp_path):
    """Python's json.dumps writes NaN, which no JSON parser (a browser's JSON.parse) reads: a
    diverged loss in a progress report or a result ended up in the job's event stream."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = JobStore.from_url(server.url, lease_seconds=60)
        job = store.create("fine_tune", {})["id"]
        assert store.claim_next(job, "w") == job
        store.report_progress(job, 0.5, loss=float("nan"), history=[1.0, float("inf")])
        stored = store.redis.hget(f"gazer:job:{job}", "progress")
        assert json.loads(stored, parse_constant=refuse) == {"fraction": 0.5, "loss": None, "history": [1.0, None]}
        assert store.finish(job, "succeeded", {"deletion": float("-inf"), "kept": 0.25})
        assert json.loads(store.redis.hget(f"gazer:job:{job}", "result"), parse_constant=refuse) == \
            {"deletion": None, "kept": 0.25}


def refuse(constant: str) -> None:
    raise ValueError(f"not JSON: {constant}")


def test_clients_take_turns_whichever_job_a_message_names(tmp_path):
    """Each message runs the oldest job of the client served longest ago: served when a job of
    it last started or ended, else when its oldest waiting job was made. A trial takes its
    sweep's client's turns; a cancelled or discarded job is passed over; a job whose submitter
    never said it waits is found by its own message; with nothing queued a message runs nothing."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = JobStore.from_url(server.url, lease_seconds=60)

        def made(client: str | None = None, parent: str | None = None, waits: bool = True) -> str:
            job = store.create("fine_tune", {}, client=client, parent=parent)
            if waits:  # as JobQueue.submit and SweepHost.submit_trial do once its message is sent
                store.wait_for_turn(job)
            return job["id"]

        alice = [made("key:alice") for _ in range(4)]
        assert store.claim_next(alice[0], "w") == alice[0]
        bob = [made("key:bob") for _ in range(2)]  # made while Alice's first job runs
        assert store.finish(alice[0], "succeeded")  # so Alice was served after Bob's jobs were made
        assert [store.claim_next(message, "w") for message in alice[1:3]] == [bob[0], alice[1]]
        assert store.finish(bob[0], "succeeded") and store.finish(alice[1], "succeeded")
        sweep = made("key:carol")  # made after Bob and Alice were served: after their waiting jobs
        assert [store.claim_next(message, "w") for message in (alice[3], bob[1], sweep)] == [
            bob[1], alice[2], sweep]  # Bob was served before Alice
        trial = made(parent=sweep)
        cancelled, discarded = made("key:dave"), made("key:erin")
        store.cancel(cancelled)
        store.discard(discarded)
        assert [store.claim_next(message, "w") for message in (trial, cancelled, discarded)] == [
            alice[3], trial, None]  # the sweep was served after Alice
        assert store.get(cancelled)["state"] == "cancelled" and not store.exists(discarded)
        assert store.get(trial)["attempts"] == 1 and store.get(trial)["state"] == "running"

        unsaid = made("key:frank", waits=False)  # its submitter failed to say it waits
        assert store.claim_next(unsaid, "w") == unsaid and store.claim_next(unsaid, "w") is None
        running = made("key:gina")
        assert store.claim(running, "w")
        store.discard(running)  # its message was sent after all, and a worker runs it: it stays
        assert store.get(running)["state"] == "running"
        assert store.redis.smembers("gazer:waiting-turns") == set()  # nothing waits, no set is left


def test_a_lost_job_reads_as_failed_in_the_summaries_too(tmp_path):
    """The metrics' reading: a job whose worker died showed as running until someone read it."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = JobStore.from_url(server.url, lease_seconds=1.0)
        lost, alive = (store.create("fine_tune", {})["id"] for _ in range(2))
        assert store.claim(lost, "gone") and store.claim(alive, "here")
        time.sleep(1.2)
        store.heartbeat(alive)
        states = {row["type"] + row["state"] for row in store.summaries(10)}
        assert states == {"fine_tunefailed", "fine_tunerunning"}
        assert store.get(lost)["error"]["type"] == "/problems/worker-lost" and store.get(alive)["state"] == "running"


def test_a_reap_that_read_the_record_before_a_heartbeat_leaves_the_job_running(tmp_path):
    """A reader found the lease expired, then the worker (stalled, say) beat before the reader
    failed the job: it was failed as worker-lost while it ran on."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = JobStore.from_url(server.url, lease_seconds=1.0)
        stalled = store.create("fine_tune", {})["id"]
        assert store.claim(stalled, "slow")
        time.sleep(1.2)
        read_before = store.redis.hgetall(f"gazer:job:{stalled}")
        store.heartbeat(stalled)
        assert store._current(stalled, read_before)["state"] == "running"
        assert store.get(stalled)["state"] == "running"
        time.sleep(1.2)
        assert store.get(stalled)["error"]["type"] == "/problems/worker-lost"  # silent since: reaped


def test_a_sweep_reaped_as_lost_or_cancelled_while_queued_cancels_its_trials(tmp_path):
    """Its worker killed, or cancelled while back in the queue, nothing collects the sweep's
    trials: they ran on for nothing."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = JobStore.from_url(server.url, lease_seconds=1.0)
        host = SweepHost(store, send=lambda job_id: None, redis_url=server.url, most_parallel=15)
        sweep = store.create("sweep", {})["id"]
        assert store.claim(sweep, "gone")
        queued, running, ended = (host.submit_trial(sweep, {"n": n}, None) for n in range(3))
        assert store.claim(running, "here") and store.claim(ended, "here") and store.finish(ended, "succeeded")
        time.sleep(1.2)
        store.heartbeat(running)
        assert store.get(sweep)["error"]["type"] == "/problems/worker-lost"
        assert store.get(queued)["state"] == "cancelled" and store.get(ended)["state"] == "succeeded"
        assert store.get(running)["state"] == "running" and store.should_stop(running, "here")

        requeued = store.create("sweep", {})["id"]  # its worker stopped: back in the queue, its trials running
        trial = host.submit_trial(requeued, {"n": 0}, None)
        assert store.claim(trial, "here")
        assert store.cancel(requeued)["state"] == "cancelled" and store.should_stop(trial, "here")


def test_a_keys_listing_reads_its_own_jobs_not_every_job(tmp_path):
    """Its cost follows the key's own jobs (a sweep's trials included), not all the others', and a
    sweep's trials are read from the sweep's own set (a parent that is no sweep cost every job
    record); an ended job trimmed or expired leaves its owner's set; jobs made before the owned
    and trial sets existed are put in them."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        store = JobStore.from_url(server.url, lease_seconds=60)
        alices = [store.create("fine_tune", {"n": index}, owner="alice", client="key:alice") for index in range(3)]
        trial = store.create("fine_tune", {"n": 3}, owner="alice", parent=alices[0]["id"])
        for index in range(300):
            store.create("fine_tune", {"n": index}, owner="mallory", client="key:mallory")

        def reads(list_call) -> tuple[list, int]:
            before = store.redis.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
            listed = list_call()
            return listed, store.redis.info("commandstats")["cmdstat_hgetall"]["calls"] - before

        listed, records_read = reads(lambda: store.list(owner="alice"))
        assert [job["id"] for job in listed] == [trial["id"], *[job["id"] for job in reversed(alices)]]
        assert records_read == 4
        listed, records_read = reads(lambda: store.list(owner="alice", parent=alices[0]["id"]))
        assert [job["id"] for job in listed] == [trial["id"]] and records_read == 1  # the sweep's own set
        assert reads(lambda: store.list(parent="no-such-sweep")) == ([], 0)
        assert len(store.list(owner="mallory", limit=1000)) == 300 and len(store.list(limit=1000)) == 304

        store.cancel(alices[1]["id"])
        assert store.trim_finished("key:alice", keep=2) == [alices[1]["id"]]
        assert store.redis.zcard("gazer:owned:alice") == 3
        store.cancel(alices[2]["id"])
        assert store.expire_finished(time.time() + 1) == [alices[2]["id"]]
        assert store.redis.zcard("gazer:owned:alice") == 2

        store.redis.delete("gazer:owned:alice", "gazer:owned:mallory", f"gazer:children:{alices[0]['id']}")  # as a
        assert store.list(parent=alices[0]["id"]) == []  # Redis kept from before those sets
        assert store.index_jobs() == 302 and store.index_jobs() == 302  # again: the same sets
        assert [job["id"] for job in store.list(owner="alice")] == [trial["id"], alices[0]["id"]]
        assert len(store.list(owner="mallory", limit=1000)) == 300
        assert [job["id"] for job in store.list(parent=alices[0]["id"])] == [trial["id"]]

def test_a_client_may_have_its_limit_of_jobs_queued_or_running_across_processes(redis_server):
    first, second = (JobStore.from_url(redis_server.url, lease_seconds=1.0) for _ in range(2))  # two API processes

    def submit(store: JobStore, client: str = "key:alice") -> str:
        return store.create("fine_tune", {}, client=client, limit=3)["id"]

    def refused(store: JobStore) -> TooManyJobs:
        with pytest.raises(TooManyJobs) as refusal:
            submit(store)
        return refusal.value

    alice = [submit(first), submit(second), submit(first)]
    for store in (first, second):
        assert refused(store).status == 429 and refused(store).extra["headers"]["Retry-After"] == "30"
    submit(first, "key:bob")
    assert sorted(job["id"] for job in second.active_jobs("key:alice")) == sorted(alice)

    cancelled = alice.pop()
    first.cancel(cancelled)
    alice.append(submit(second))
    refused(first)

    failed = alice.pop()
    assert second.claim(failed, "worker") and second.finish(failed, "failed")
    alice.append(submit(first))
    refused(second)

    unsent = alice.pop()
    first.discard(unsent)
    alice.append(submit(second))
    refused(first)

    lost = alice.pop()
    assert first.claim(lost, "worker")
    time.sleep(1.2)  # its worker died: the lease ran out, and nobody has read the job since
    alice.append(submit(second))
    assert first.get(lost)["state"] == "failed" and first.get(lost)["error"]["type"].endswith("worker-lost")
    refused(first)


def test_a_sweeps_trials_do_not_count_against_its_client(redis_server):
    store = JobStore.from_url(redis_server.url, lease_seconds=60)
    sweep = store.create("sweep", {}, owner="carol", client="key:carol", limit=1)
    host = SweepHost(store, send=lambda job_id: None, redis_url=redis_server.url, most_parallel=15)
    trials = [host.submit_trial(sweep["id"], {"n": n}, "carol") for n in range(3)]
    assert [job["id"] for job in store.active_jobs("key:carol")] == [sweep["id"]]
    assert all(store.get(trial)["owner"] == "carol" for trial in trials)
    with pytest.raises(TooManyJobs):
        store.create("sweep", {}, owner="carol", client="key:carol", limit=1)


def test_a_sweep_that_names_no_parallel_runs_a_trial_per_live_worker_within_its_clients_share(redis_server,
                                                                                              tmp_path):
    """Three live workers, a client's share of one job beside its sweep: one trial at a time."""
    store = JobStore.from_url(redis_server.url, lease_seconds=60)
    for worker in ("w1", "w2", "w3"):
        store.worker_alive(worker)
    sent: list[str] = []
    host = SweepHost(store, send=sent.append, redis_url=redis_server.url, most_parallel=1)
    base = {"base_model": "efficientnet_lite0", "dataset_id": "d", "output_model": "m"}
    params = {"base": base, "space": {"lr": {"log_uniform": [1e-4, 1e-2]}}, "trials": 4}
    sweep = store.create("sweep", params, owner=None, client="address:x", limit=1)
    context = JobContext(Storage(tmp_path), None, 10**6, lambda job_id, name: name)
    checks = []

    def should_stop() -> bool:  # stops the sweep on its third look: by then it has launched all it will
        checks.append(len(sent))
        return len(checks) >= 3

    with pytest.raises(JobCancelled):
        run_sweep(sweep["id"], params, lambda *args, **kwargs: None, should_stop, context, host)
    assert len(sent) == 1, sent
    for worker in ("w1", "w2", "w3"):
        store.worker_gone(worker)


def test_a_sweep_that_crashes_cancels_its_trials_and_drops_its_study(redis_server, tmp_path):
    """Its coordinator stopped on an error (Redis refusing a write, say): its trials ran on, for
    nothing, and its study stayed in Redis."""
    store = JobStore.from_url(redis_server.url, lease_seconds=60)
    sent: list[str] = []
    host = SweepHost(store, send=sent.append, redis_url=redis_server.url, most_parallel=2)
    base = {"base_model": "efficientnet_lite0", "dataset_id": "d", "output_model": "m"}
    params = {"base": base, "space": {"lr": {"log_uniform": [1e-4, 1e-2]}}, "trials": 4, "parallel": 2}
    sweep = store.create("sweep", params)
    context = JobContext(Storage(tmp_path), None, 10**6, lambda job_id, name: name)

    def should_stop() -> bool:
        if sent:
            raise RuntimeError("the coordinator crashed")
        return False

    with pytest.raises(RuntimeError):
        run_sweep(sweep["id"], params, lambda *args, **kwargs: None, should_stop, context, host)
    assert len(sent) == 2 and {store.get(trial)["state"] for trial in sent} == {"queued"}
    assert store.finish(sweep["id"], "failed", error={"detail": "crashed"})  # as its worker writes its end
    assert {store.get(trial)["state"] for trial in sent} == {"cancelled"}
    assert not list(store.redis.scan_iter(match=f"gazer:optuna:{sweep['id']}:*"))


def test_a_sweep_cancelled_as_its_worker_stops_ends_cancelled_with_its_trials_and_study(redis_server, tmp_path):
    """The stop is seen first, so the sweep would go back to the queue, keeping its trials and
    study, but the cancel stands: nothing may be left running or kept for a next run."""
    store = JobStore.from_url(redis_server.url, lease_seconds=60)
    sent: list[str] = []
    stopping = threading.Event()
    host = SweepHost(store, send=sent.append, redis_url=redis_server.url, most_parallel=2, stopping=stopping)
    base = {"base_model": "efficientnet_lite0", "dataset_id": "d", "output_model": "m"}
    params = {"base": base, "space": {"lr": {"log_uniform": [1e-4, 1e-2]}}, "trials": 4, "parallel": 2}
    sweep = store.create("sweep", params)["id"]
    assert store.claim(sweep, "w1")
    context = JobContext(Storage(tmp_path), None, 10**6, lambda job_id, name: name)
    worker = tasks.Worker(store, context, WorkerMetrics(), host, sent.append, 3600, stopping)
    running = threading.Thread(target=tasks._run, args=(store.get(sweep), worker, "w1"))
    running.start()
    while len(sent) < 2:
        time.sleep(0.05)
    store.cancel(sweep)
    stopping.set()
    running.join(30)
    assert store.get(sweep)["state"] == "cancelled"
    assert [store.get(trial)["state"] for trial in sent] == ["cancelled", "cancelled"]
    assert not list(store.redis.scan_iter(match=f"gazer:optuna:{sweep}:*"))


def test_a_client_keeps_a_bounded_number_of_job_records_its_oldest_ended_ones_going_first(redis_server, tmp_path):
    """A submit-and-cancel loop does not grow Redis and the disk without end: beyond `keep`
    records, the client's oldest ended jobs go (records and artifacts); live jobs never do."""
    queue = JobQueue(redis_server.url, lease_seconds=60, visibility_timeout=3600)
    storage = Storage(tmp_path)

    def submit(client: str = "key:erin") -> str:
        return queue.submit("fine_tune", {}, None, client, limit=3, keep=5, storage=storage)["id"]

    running = submit()
    assert queue.store.claim(running, "worker")
    ended = []
    for _ in range(4):
        job_id = submit()
        queue.store.cancel(job_id)
        storage.job_artifacts(job_id).mkdir(parents=True)
        ended.append(job_id)
    other = submit("key:frank")
    newest = submit()  # erin keeps 5: her oldest ended job goes to make room
    assert not queue.store.exists(ended[0]) and not storage.job_artifacts(ended[0]).exists()
    assert all(queue.store.exists(job_id) for job_id in [running, *ended[1:], newest, other])
    assert storage.job_artifacts(ended[1]).exists()
    for _ in range(3):  # cancelled as they come: only ended ones go, the running one stays
        queue.store.cancel(submit())
    assert queue.store.exists(running) and queue.store.get(running)["state"] == "running"
    assert queue.store.redis.zcard("gazer:kept:key:erin") == 5 and queue.store.exists(other)
    assert [job_id for job_id in ended if queue.store.exists(job_id)] == []


def test_a_trimmed_sweep_takes_its_ended_trials_with_it(redis_server, tmp_path):
    """Trials count against no client: without their sweep's trim they would stay until
    retention, however many sweeps its client submitted and cancelled."""
    queue = JobQueue(redis_server.url, lease_seconds=60, visibility_timeout=3600)
    storage = Storage(tmp_path)
    host = SweepHost(queue.store, send=lambda job_id: None, redis_url=redis_server.url, most_parallel=15)

    def submit(job_type: str) -> str:
        return queue.submit(job_type, {}, "gina", "key:gina", limit=3, keep=1, storage=storage)["id"]

    sweep = submit("sweep")
    ended, running = (host.submit_trial(sweep, {}, "gina") for _ in range(2))
    queue.store.cancel(ended)
    assert queue.store.claim(running, "worker")
    storage.job_artifacts(ended).mkdir(parents=True)
    queue.store.cancel(sweep)
    later = submit("fine_tune")  # gina keeps 1: her sweep goes, with its ended trial and that one's files
    assert not queue.store.exists(sweep) and not queue.store.exists(ended)
    assert not storage.job_artifacts(ended).exists()
    assert queue.store.exists(running) and queue.store.exists(later)  # a running trial stays until retention
    listed = [job["id"] for job in queue.store.list(owner="gina")]
    assert ended not in listed and running in listed and later in listed


def test_a_data_sets_jobs_are_found_however_many_jobs_came_after_them(redis_server, tmp_path):
    """Only the newest 2,000 records were read: a job queued before 2,000 others (a busy server
    during a long fine-tune) was missed, and its data set deleted under it. A sweep's trial counts
    too, and an ended job does not."""
    queue = JobQueue(redis_server.url, lease_seconds=60, visibility_timeout=3600)
    reader = queue.store.create("explain-dataset", {"dataset_id": "old"}, client="key:ann")
    sweep = queue.store.create("sweep", {"base": {"dataset_id": "swept"}}, client="key:ann")
    trial = queue.store.create("fine-tune", {"dataset_id": "swept"}, parent=sweep["id"])
    ended = queue.store.create("fine-tune", {"dataset_id": "old"}, client="key:ann")
    queue.store.finish(ended["id"], "cancelled")
    assert ended["id"] not in queue.store.redis.smembers("gazer:active-jobs")  # it leaves as it ends
    with queue.store.redis.pipeline(transaction=False) as later:
        for index in range(2100):
            later.hset(f"gazer:job:later{index}", mapping={"id": f"later{index}", "type": "fine-tune",
                                                            "state": "succeeded"})
            later.zadd("gazer:jobs", {f"later{index}": time.time() + 1})
        later.execute()
    assert [job["id"] for job in queue.jobs_using_dataset("old")] == [reader["id"]]
    assert sorted(job["id"] for job in queue.jobs_using_dataset("swept")) == sorted([sweep["id"], trial["id"]])
    queue.store.redis.delete("gazer:active-jobs")  # as a Redis kept from before the set
    queue.store.index_jobs()
    assert [job["id"] for job in queue.jobs_using_dataset("old")] == [reader["id"]]
