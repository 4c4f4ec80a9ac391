"""docker-compose.yml and the Dockerfile, checked for structure (no Docker engine runs here):
what a production deployment needs is written down and cannot silently go missing."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("redis", "api", "worker")


def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_restarts_has_a_health_check_and_a_memory_limit(name):
    service = services()[name]
    assert service["restart"] == "unless-stopped"
    assert service["healthcheck"]["test"]
    assert service["deploy"]["resources"]["limits"]["memory"]


def test_redis_has_a_password_and_a_memory_cap_without_eviction():
    command = services()["redis"]["command"]
    assert "--requirepass" in command and "--maxmemory" in command
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    for name in ("api", "worker"):
        url = services()[name]["environment"]["GAZER_REDIS_URL"]
        assert url.startswith("redis://:${GAZER_REDIS_PASSWORD") and url.endswith("@redis:6379/0")


def test_the_api_runs_with_keys_and_can_be_scaled():
    api = services()["api"]
    assert api["environment"]["GAZER_API_KEYS"].startswith("/data/")
    assert api["environment"]["HOST"] == "0.0.0.0"
    assert api["ports"] == ["8000-8009:8000"]  # one host port per replica


def test_the_api_checks_jobs_against_the_workers_memory_limit_not_its_hosts():
    limit = services()["worker"]["deploy"]["resources"]["limits"]["memory"]
    assert limit.endswith("g")
    worker_bytes = int(limit[:-1]) * 2**30
    for name in ("api", "worker"):
        assert int(services()[name]["environment"]["GAZER_WORKER_MEMORY_BYTES"]) == int(0.8 * worker_bytes)


def test_the_image_runs_as_a_user_of_its_own():
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    for package in ("core", "gazer", "infra", "schemas", "service", "worker"):
        assert f"COPY {package} {package}" in lines, package
