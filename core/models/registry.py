"""Which models exist, loading them on first use, and their serving status."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from core.attention import attention_modules, spatial_gates
from core.errors import GazerError, ModelNotReady, UnknownModel
from core.explain import supported_methods
from core.models import catalog, versions
from core.names import BUILTIN_MODELS
from core.models.architectures import build_network
from core.models.layers import targetable_layers
from core.models.onnx_export import AGREEMENT_TOLERANCE, ensure_onnx, max_logit_difference
from core.models.spec import ModelSpec
from core.runtime.devices import torch_device
from core.runtime.onnx_predictor import OnnxPredictor
from core.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    spec: ModelSpec
    network: nn.Module
    predictor: OnnxPredictor
    layers: dict[str, int]          # targetable layers and their channels
    device: torch.device
    methods: list[str]
    attention: list[str]
    spatial_gates: list[str]
    # Explainers attach hooks to `network`; one request at a time may hold them.
    lock: threading.Lock = field(default_factory=threading.Lock)


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`name` (newest version) or `name@N`."""
    name, _, version = ref.partition("@")
    if version and not (version.isascii() and version.isdigit()):
        raise UnknownModel(f"bad model reference {ref!r}: use NAME or NAME@VERSION")
    return name, int(version) if version else None


def build_for(spec: ModelSpec) -> nn.Module:
    return build_network(spec.architecture, spec.num_classes, spec.input_size, spec.head_hidden, spec.dropout,
                         spec.attention_type, spec.attention_stages)


class ModelRegistry:
    """Built-in models plus fine-tuned versions found on disk (looked up on every request, so
    a version written by a worker is served at once)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._loaded: dict[str, LoadedModel] = {}
        self._failures: dict[str, str] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._lock = threading.Lock()

    def model_ids(self) -> list[str]:
        return list(BUILTIN_MODELS) + [name for name in versions.model_names(self.storage.models)
                                               if name not in BUILTIN_MODELS]

    def spec(self, ref: str) -> ModelSpec:
        name, version = parse_ref(ref)
        if name in BUILTIN_MODELS:
            if version not in (None, 1):
                raise UnknownModel(f"model {name!r} has only version 1")
            return catalog.builtin_spec(name)  # cached there
        available = versions.versions(self.storage.models, name)
        if not available:
            raise UnknownModel(f"no model {name!r}; known: {', '.join(self.model_ids())}")
        if version is None:
            version = available[-1]
        elif version not in available:
            raise UnknownModel(f"model {name!r} has no version {version}; versions: {available}")
        key = f"{name}@{version}"
        if key not in self._specs:
            self._specs[key] = versions.read_spec(self.storage.models, name, version)
        return self._specs[key]

    def loaded(self, ref: str) -> LoadedModel | None:
        if "@" not in ref and ref in BUILTIN_MODELS:
            return self._loaded.get(f"{ref}@1")
        return None

    def get(self, ref: str) -> LoadedModel:
        spec = self.spec(ref)
        loaded = self._loaded.get(spec.ref)
        if loaded is not None:
            return loaded
        if spec.ref in self._failures:
            raise ModelNotReady(f"model {spec.ref!r} is not served: {self._failures[spec.ref]}")
        with self._lock:
            if spec.ref in self._failures:  # another request failed to load it while we waited
                raise ModelNotReady(f"model {spec.ref!r} is not served: {self._failures[spec.ref]}")
            if spec.ref not in self._loaded:
                try:
                    self._load(spec)
                except GazerError:
                    raise
                except (OSError, MemoryError) as error:  # may pass (a full disk, memory): try again later
                    log.exception("model %s failed to load", spec.ref)
                    raise ModelNotReady(f"model {spec.ref!r} could not be loaded now: {type(error).__name__}: "
                                        f"{error}") from None
                except Exception as error:  # a corrupt file: it fails the same way every time
                    log.exception("model %s failed to load", spec.ref)
                    self._failures[spec.ref] = f"loading failed: {type(error).__name__}: {error}"
                    raise ModelNotReady(f"model {spec.ref!r} is not served: {self._failures[spec.ref]}") from None
        return self._loaded[spec.ref]

    def load_network(self, ref: str) -> tuple[ModelSpec, nn.Module]:
        """A fresh CPU copy of a model's network (for training from it)."""
        spec = self.spec(ref)
        if spec.id in BUILTIN_MODELS:
            return catalog.load_builtin(spec.id)
        return spec, versions.load_weights(self.storage.models, spec, build_for(spec))

    def _load(self, spec: ModelSpec) -> None:
        spec, network = self.load_network(spec.ref)
        if spec.id in BUILTIN_MODELS:
            onnx_file = ensure_onnx(network, spec, self.storage.onnx_cache)
        else:
            onnx_file = versions.version_dir(self.storage.models, spec.id, spec.version) / versions.ONNX
        predictor = OnnxPredictor(onnx_file)
        device = torch_device()
        network = network.to(device)
        difference = max_logit_difference(network, predictor, spec.input_size)
        if difference > AGREEMENT_TOLERANCE:
            reason = (f"torch and ONNX Runtime logits differ by {difference:.2e} "
                      f"(tolerance {AGREEMENT_TOLERANCE:.0e}); not served")
            self._failures[spec.ref] = reason
            log.error("model %s: %s", spec.ref, reason)
            raise ModelNotReady(f"model {spec.ref!r} is not served: {reason}")
        layers = targetable_layers(network, spec.input_size)
        gates = spatial_gates(network)
        methods = supported_methods(spec.linear_head, bool(gates))
        self._loaded[spec.ref] = LoadedModel(spec, network, predictor, layers, device, methods,
                                             attention_modules(network), gates)
        log.info("model %s loaded (max |torch - onnx| logit %.2e, providers %s)",
                 spec.ref, difference, predictor.providers)

    def state(self, ref: str) -> dict[str, object]:
        """`ready` (with its version), `failed` (with the reason) or `not_loaded`."""
        ref = self.spec(ref).ref
        if ref in self._loaded:
            return {"state": "ready", "version": self._loaded[ref].spec.version}
        if ref in self._failures:
            return {"state": "failed", "reason": self._failures[ref]}
        return {"state": "not_loaded"}

    def status(self) -> dict[str, dict[str, object]]:
        return {model_id: self.state(model_id) for model_id in self.model_ids()}
