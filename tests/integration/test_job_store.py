"""The job index on a real redis-server: listing pages through it, newest first."""

from __future__ import annotations

from infra.embedded_redis import EmbeddedRedis
from infra.job_store import JobStore


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
