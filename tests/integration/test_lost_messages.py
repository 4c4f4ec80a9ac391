"""A job whose Celery message was lost (its worker died between taking the message and claiming
the job, or Redis lost it) is sent a message again once it has waited with none in the queue;
until then it waited for the visibility timeout, a week. Real Redis, a real worker."""

from __future__ import annotations

from infra.job_metrics import queue_depth
from tests.integration.conftest import make_client, wait_for
from tests.integration.test_jobs import long_maximization, submit


def test_a_job_that_lost_its_message_gets_another_and_runs(redis_server, shared_dir, start_worker):
    with make_client(redis_server, shared_dir) as api:
        queue = api.app.state.queue
        job = submit(api, "activation-maximization", long_maximization(steps=5))
        assert queue.resend_lost_messages(waited_seconds=0) == 0  # its message waits in the queue
        assert queue_depth(queue.store.redis) == 1
        queue.store.redis.delete("celery")  # the message gone, as a worker killed holding it leaves it
        assert queue.resend_lost_messages(waited_seconds=3600) == 0  # not waited long enough yet
        queue.store.redis.delete("gazer:resend-lock")  # that look took the period's lock
        assert queue.resend_lost_messages(waited_seconds=0) == 1
        assert queue.resend_lost_messages(waited_seconds=0) == 0  # one look per period, and one is waiting now
        start_worker()
        assert wait_for(api, job["id"], ("succeeded", "failed"), timeout=120)["state"] == "succeeded"
