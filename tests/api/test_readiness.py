"""A model whose ONNX Runtime logits do not match torch's is not served, and says why."""

from __future__ import annotations

import torch
from fastapi.testclient import TestClient

from core.models.catalog import load_builtin
from core.models.onnx_export import export_onnx, onnx_path
from core.storage import Storage
from service.app import create_app
from service.settings import Settings
from tests.conftest import MODEL
from support import chelsea, encode, upload


def test_disagreeing_onnx_file_keeps_the_model_out_of_service(tmp_path):
    # The ONNX cache holds a file exported from slightly different weights, as a stale or
    # tampered cache would: torch (the real weights) and ONNX Runtime now disagree.
    spec, network = load_builtin(MODEL)
    with torch.no_grad():
        network.classifier.bias += 0.01
    cached = onnx_path(Storage(tmp_path).onnx_cache, spec)
    cached.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(network, spec.input_size, cached)

    with TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=tmp_path))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        model = ready.json()["models"][MODEL]
        assert model["state"] == "failed" and "logits differ by 1.00e-02" in model["reason"]
        refused = client.post(f"/v1/models/{MODEL}/predict", files=[upload(encode(chelsea()))])
        assert refused.status_code == 503 and refused.json()["type"] == "/problems/model-not-ready"
        assert "not served" in refused.json()["detail"]
