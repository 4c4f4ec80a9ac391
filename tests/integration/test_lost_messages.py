"""A job whose Celery message was lost (its worker died between taking the message and claiming
the job, or Redis lost it) is sent a message again once two looks in a row found it waiting with
no message in the queue; until then it waited for the visibility timeout, a week. A job that a
worker claims between two looks gets none. Real Redis, a real worker."""

from __future__ import annotations

from infra.job_metrics import queue_depth
from tests.integration.conftest import make_client, wait_for
from tests.integration.test_jobs import long_maximization, submit


def test_a_job_that_lost_its_message_gets_another_and_runs(redis_server, shared_dir, start_worker):
    with make_client(redis_server, shared_dir) as api:
        queue = api.app.state.queue
        redis = queue.store.redis

        def look() -> int:
            redis.delete("gazer:resend-lock")  # as half a period later
            return queue.resend_lost_messages()

        lost = submit(api, "activation-maximization", long_maximization(steps=5))
        assert look() == 0 and queue_depth(redis) == 1  # its message waits in the queue
        redis.delete("celery")  # the message gone, as a worker killed holding it leaves it
        assert look() == 0  # the first look that finds it waiting with none
        assert queue.resend_lost_messages() == 0  # one look per half period among API processes
        assert look() == 1 and queue_depth(redis) == 1  # the second
        assert look() == 0  # its new message waits in the queue
        worker = start_worker()
        assert wait_for(api, lost["id"], ("succeeded", "failed"), timeout=120)["state"] == "succeeded"
        worker.stop()

        taken = submit(api, "activation-maximization", long_maximization(steps=5))
        redis.delete("celery")  # a worker took its message: on its way to claim the job
        assert look() == 0
        assert queue.store.claim_next(taken["id"], "worker-1") == taken["id"]
        assert look() == 0 and queue_depth(redis) == 0  # claimed meanwhile: no message too many
