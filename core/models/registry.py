"""Which models exist, loading them on first use, and their serving status."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.errors import ModelNotReady, UnknownModel
from core.models import catalog
from core.models.onnx_export import AGREEMENT_TOLERANCE, ensure_onnx, max_logit_difference
from core.models.spec import ModelSpec
from core.runtime.devices import torch_device
from core.runtime.onnx_predictor import OnnxPredictor

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    spec: ModelSpec
    network: nn.Module
    predictor: OnnxPredictor
    layers: tuple[str, ...]
    device: torch.device
    # Explainers attach hooks to `network`; one request at a time may hold them.
    lock: threading.Lock = field(default_factory=threading.Lock)


def targetable_layers(network: nn.Module, input_size: int) -> tuple[str, ...]:
    """Named modules that run exactly once per forward and output a 4-D feature map."""
    calls: dict[str, int] = {}
    four_d: set[str] = set()
    handles = []
    for name, module in network.named_modules():
        if not name:
            continue

        def record(module, inputs, output, name=name):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                four_d.add(name)

        handles.append(module.register_forward_hook(record))
    try:
        device = next(network.parameters()).device
        with torch.no_grad():
            network(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return tuple(name for name, _ in network.named_modules() if calls.get(name) == 1 and name in four_d)


class ModelRegistry:
    def __init__(self, data_dir: Path) -> None:
        self.onnx_dir = data_dir / "onnx"
        self._loaded: dict[str, LoadedModel] = {}
        self._failures: dict[str, str] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._lock = threading.Lock()

    def model_ids(self) -> list[str]:
        return list(catalog.BUILTIN_MODELS)

    def spec(self, model_id: str) -> ModelSpec:
        if model_id not in self.model_ids():
            raise UnknownModel(f"no model {model_id!r}; known: {', '.join(self.model_ids())}")
        if model_id not in self._specs:
            self._specs[model_id] = catalog.builtin_spec(model_id)
        return self._specs[model_id]

    def loaded(self, model_id: str) -> LoadedModel | None:
        return self._loaded.get(model_id)

    def get(self, model_id: str) -> LoadedModel:
        loaded = self._loaded.get(model_id)
        if loaded is not None:
            return loaded
        self.spec(model_id)
        if model_id in self._failures:
            raise ModelNotReady(f"model {model_id!r} is not served: {self._failures[model_id]}")
        with self._lock:
            if model_id not in self._loaded:
                self._load(model_id)
        return self._loaded[model_id]

    def _load(self, model_id: str) -> None:
        spec, network = catalog.load_builtin(model_id)
        predictor = OnnxPredictor(ensure_onnx(network, spec, self.onnx_dir))
        device = torch_device()
        network = network.to(device)
        difference = max_logit_difference(network, predictor, spec.input_size)
        if difference > AGREEMENT_TOLERANCE:
            reason = (f"torch and ONNX Runtime logits differ by {difference:.2e} "
                      f"(tolerance {AGREEMENT_TOLERANCE:.0e}); not served")
            self._failures[model_id] = reason
            log.error("model %s: %s", model_id, reason)
            raise ModelNotReady(f"model {model_id!r} is not served: {reason}")
        self._failures.pop(model_id, None)
        layers = targetable_layers(network, spec.input_size)
        self._loaded[model_id] = LoadedModel(spec, network, predictor, layers, device)
        log.info("model %s loaded (max |torch - onnx| logit %.2e, providers %s)",
                 model_id, difference, predictor.providers)

    def status(self) -> dict[str, dict[str, object]]:
        report: dict[str, dict[str, object]] = {}
        for model_id in self.model_ids():
            if model_id in self._loaded:
                report[model_id] = {"state": "ready"}
            elif model_id in self._failures:
                report[model_id] = {"state": "failed", "reason": self._failures[model_id]}
            else:
                report[model_id] = {"state": "not_loaded"}
        return report
