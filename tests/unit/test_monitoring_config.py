"""The monitoring profile, checked for structure (no Docker engine here): compose parses, the
Prometheus targets are the compose services and ports, and every dashboard query names a
metric that the API or the worker really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.storage import Storage
from service.metrics import Metrics
from worker.metrics import WorkerMetrics

yaml = pytest.importorskip("yaml")  # PyYAML comes with the test dependencies, not declared by us
ROOT = Path(__file__).resolve().parents[2]
KEY_FILE = "./monitoring/metrics-key"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    texts = [Metrics(SimpleNamespace(), 1, Storage(ROOT / 'var')).render(), generate_latest(WorkerMetrics().registry)]
    return {family.name + suffix for text in texts for family in text_string_to_metric_families(text.decode())
            for suffix in SUFFIXES[family.type]}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_monitoring_services_are_an_optional_profile():
    services = compose()["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"] == services["grafana"]["profiles"]
    assert all("profiles" not in services[name] for name in ("redis", "api", "worker"))
    mounts = {volume.split(":")[0] for name in ("prometheus", "grafana") for volume in services[name]["volumes"]}
    for mount in mounts - {KEY_FILE}:  # the key is the operator's to make, never in the repository
        assert (ROOT / mount).exists(), mount
    assert KEY_FILE in mounts and KEY_FILE.removeprefix("./") in (ROOT / ".gitignore").read_text().split()
    for name in ("prometheus", "grafana"):
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"]), name


def test_prometheus_scrapes_the_api_with_the_metrics_key_that_compose_mounts():
    volumes = dict(volume.split(":")[:2] for volume in compose()["services"]["prometheus"]["volumes"])
    api = next(job for job in yaml.safe_load((ROOT / "monitoring/prometheus.yml").read_text())["scrape_configs"]
               if job["job_name"] == "gazer-api")
    assert api["authorization"] == {"type": "Bearer", "credentials_file": volumes[KEY_FILE]}


def test_prometheus_scrapes_the_api_and_the_worker_where_compose_serves_them():
    services = compose()["services"]
    scrape = yaml.safe_load((ROOT / "monitoring/prometheus.yml").read_text())["scrape_configs"]
    targets = {job["job_name"]: (job.get("metrics_path", "/metrics"), [
                   f"{name}:{found['port']}" for found in job["dns_sd_configs"] for name in found["names"]
                   if found["type"] == "A"])
               for job in scrape}
    api_env, worker_env = services["api"]["environment"], services["worker"]["environment"]
    assert targets["gazer-api"] == ("/metrics", [f"api:{api_env['PORT']}"])
    assert targets["gazer-worker"] == ("/metrics", [f"worker:{worker_env['GAZER_WORKER_METRICS_PORT']}"])
    assert worker_env["GAZER_WORKER_METRICS_PORT"] in services["worker"]["expose"]


def test_every_dashboard_query_uses_an_exported_metric():
    dashboard = json.loads((ROOT / "monitoring/grafana/dashboards/gazer.json").read_text())
    exported = exported_names()
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bgazer_[a-z0-9_]+", target["expr"]))
            assert names and names <= exported, (panel["title"], names - exported)
            used |= names
    for family in ("gazer_http_requests_total", "gazer_inference_seconds_bucket", "gazer_jobs",
                   "gazer_queue_depth", "gazer_worker_job_duration_seconds_bucket", "gazer_storage_free_bytes"):
        assert family in used
    provider = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/dashboards/gazer.yml").read_text())
    grafana_mounts = dict(volume.split(":")[:2] for volume in compose()["services"]["grafana"]["volumes"])
    assert grafana_mounts["./monitoring/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
