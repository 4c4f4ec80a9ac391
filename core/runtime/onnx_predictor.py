"""Predictions on ONNX Runtime: one session per model, outputs `logits` and `features`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from core.runtime.devices import onnx_providers


class OnnxPredictor:
    def __init__(self, path: Path) -> None:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=onnx_providers())
        self.input_name = self.session.get_inputs()[0].name

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {self.input_name: batch})[0]

    def logits_and_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(["logits", "features"], {self.input_name: batch})
        return logits, features
