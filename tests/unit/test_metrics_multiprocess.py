"""With PROMETHEUS_MULTIPROC_DIR set, one process's /metrics sums what every API process counted;
the live gauges of processes that have ended no longer count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
MAKE = ("from pathlib import Path\nfrom types import SimpleNamespace\nfrom core.storage import Storage\n"
        "from service.metrics import Metrics\nmetrics = Metrics(SimpleNamespace(), 2, Storage(Path('var'), 12345))\n")
COUNT_ONE = (MAKE + "metrics.observe_request('/v1/models/{model}/predict', 'POST', 200, 0.01)\n")
RENDER = MAKE + "import sys\nsys.stdout.write(metrics.render().decode())\n"


def test_counts_from_several_processes_add_up(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", COUNT_ONE], cwd=ROOT, env=env, check=True)
    text = subprocess.run([sys.executable, "-c", RENDER], cwd=ROOT, env=env, check=True, capture_output=True,
                          text=True).stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    labels = (("method", "POST"), ("route", "/v1/models/{model}/predict"), ("status", "200"))
    assert samples[("gazer_http_requests_total", labels)] == 2
    assert samples[("gazer_http_request_duration_seconds_count", labels[:2])] == 2
    assert ("gazer_jobs", ()) not in samples and samples[("gazer_models_loaded", ())] == 0  # no app state here
    assert samples[("gazer_storage_min_free_bytes", ())] == 12345 and samples[("gazer_storage_free_bytes", ())] > 0
    assert samples[("gazer_explain_slots", ())] == 2  # the answering process's own: the two that ended are gone
