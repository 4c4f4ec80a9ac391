"""Which models exist, loading them on first use, and their serving status."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from contextlib import suppress
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Hashable

import torch
from torch import nn

from core.batching import Batcher, Batching, RunBatch
from core.attention import attention_modules, spatial_gates
from core.errors import Conflict, GazerError, InvalidRequest, ModelNotReady, UnknownModel
from core.explain import supported_methods
from core.explain.guided_backprop import guides
from core.models import catalog, refs, versions
from core.models.adapted import on_meta
from core.names import BUILTIN_MODELS, ONNX_ARCHITECTURE
from core.models.architectures import build_network
from core.models.flops import network_flops, relative_cost
from core.models.layers import targetable_maps
from core.models.onnx_export import (AGREEMENT_TOLERANCE, FP16_AGREEMENT_TOLERANCE, ensure_onnx,
                                     max_logit_difference)
from core.models.spec import ModelSpec
from core.runtime.devices import fast_layout, torch_device
from core.runtime.onnx_predictor import OnnxPredictor
from core.storage import Storage, check_name

log = logging.getLogger(__name__)

# A model that failed to load is tried again after this long. ONNX Runtime's exceptions do not
# tell a corrupt file from a failed allocation: the one costs a load a minute, the other heals.
RETRY_FAILED_LOAD_SECONDS = 60.0


@dataclass
class LoadedModel:
    spec: ModelSpec
    network: nn.Module | None        # None: served from ONNX alone (model-agnostic methods only)
    predictor: OnnxPredictor
    layers: dict[str, int]          # targetable layers and their channels
    device: torch.device
    methods: list[str]
    attention: list[str]
    spatial_gates: list[str]
    batching: Batching = field(default_factory=Batching)
    bfloat16: bool = False           # gradient CAM methods in bfloat16 autocast on CUDA (fast_math)
    map_positions: dict[str, int] = field(default_factory=dict)  # targetable layers' map height x width
    forward_cost: float = 1.0  # one forward in forwards of the explain budget's reference (flops.relative_cost)
    # Explainers attach hooks to `network`; one batch at a time may hold them (reentrant: a
    # short batch may run inside a long one's pause, on the same thread).
    lock: threading.RLock = field(default_factory=threading.RLock)
    _batchers: dict[str, Batcher] = field(default_factory=dict)
    _batchers_lock: threading.Lock = field(default_factory=threading.Lock)

    def batcher(self, kind: str, run: RunBatch, is_long: Callable[[Hashable], bool] = lambda key: False,
                runners: int = 1, max_batch: int | None = None) -> Batcher:
        """This model's batcher of `kind` (`run`, `is_long`, `runners` and `max_batch`, by default
        the model's `batching.max_batch`, are used when it is first made)."""
        with self._batchers_lock:
            if kind not in self._batchers:
                observe = self.batching.observe
                self._batchers[kind] = Batcher(f"{self.spec.ref} {kind}", run, max_batch or self.batching.max_batch,
                                               self.batching.wait_seconds, is_long,
                                               (lambda images: observe(kind, images)) if observe else None,
                                               runners)
            return self._batchers[kind]


def build_for(spec: ModelSpec) -> nn.Module:
    return build_network(spec.architecture, spec.num_classes, spec.input_size, spec.head_hidden, spec.dropout,
                         spec.attention_type, spec.attention_stages, attention_gate=spec.attention_gate,
                         attention_stride=spec.attention_stride)


@functools.lru_cache(maxsize=256)
def network_forward_cost(spec: ModelSpec, input_size: int) -> float:
    """What one forward of `spec`'s network at `input_size` counts in the budgets (relative_cost),
    its FLOPs counted on the meta device: nothing is allocated and no weights are read (about
    0.2-1.5 s here, once per model and size). For a model with a torch network."""
    with on_meta(spec.architecture):
        network = build_for(spec).eval()  # a training BatchNorm refuses one image's 1 x 1 map (Lite0 at 32 px)
    return relative_cost(network_flops(network, input_size))


class ModelRegistry:
    """Built-in models plus the versions found on disk (looked up on every request, so a
    version written by a worker or an upload is served at once). A plain name means its pinned
    version, else its newest version that loads. At most `max_loaded` models stay loaded; the
    least recently used goes first, except those named in `resident` (the default model)."""

    def __init__(self, storage: Storage, max_loaded: int, resident: tuple[str, ...] = (),
                 batching: Batching = Batching(), onnx_fp16: bool = False, bfloat16: bool = False) -> None:
        """`onnx_fp16`: on a GPU, built-in models predict from a float16 ONNX export (checked
        against torch within FP16_AGREEMENT_TOLERANCE instead of AGREEMENT_TOLERANCE).
        `bfloat16`: on a GPU, the gradient CAM methods run in bfloat16 autocast (fast_math)."""
        self.storage = storage
        self.batching = batching
        self.onnx_fp16 = onnx_fp16
        self.bfloat16 = bfloat16
        self.max_loaded = max_loaded
        self.resident = {refs.parse_ref(ref)[0] for ref in resident}  # names: `m@1` keeps m's versions
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._failures: dict[str, str] = {}  # ref -> why it failed to load
        self._failed_at: dict[str, float] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._lock = threading.Lock()       # held while a model loads
        self._order_lock = threading.Lock()  # held briefly around every change of `_loaded`

    def model_ids(self) -> list[str]:
        return refs.model_ids(self.storage.models)

    def versions(self, name: str) -> list[int]:
        check_name(name, "model")
        return refs.check_ref(self.storage.models, name)[2]

    def pinned(self, name: str) -> int | None:
        return None if name in BUILTIN_MODELS else versions.pinned_version(self.storage.models, name)

    def spec(self, ref: str) -> ModelSpec:
        name, version, available = refs.check_ref(self.storage.models, ref)
        if name in BUILTIN_MODELS:
            return catalog.builtin_spec(name)  # cached there
        if version is None:
            version = self._default_version(name, available)
        key = f"{name}@{version}"
        if key not in self._specs:
            self._specs[key] = versions.read_spec(self.storage.models, name, version)
        return self._specs[key]

    def _default_version(self, name: str, available: list[int]) -> int:
        pinned = self.pinned(name)
        if pinned in available:
            return pinned
        loadable = [version for version in available if f"{name}@{version}" not in self._failures]
        return (loadable or available)[-1]

    def loaded(self, ref: str) -> LoadedModel | None:
        """A built-in model already loaded, found without touching the disk."""
        if "@" not in ref and ref in BUILTIN_MODELS:
            return self._touch(f"{ref}@1")
        return None

    def _touch(self, ref: str) -> LoadedModel | None:
        """The loaded model, marked as the most recently used."""
        with self._order_lock:
            model = self._loaded.get(ref)
            if model is not None:
                self._loaded.move_to_end(ref)
            return model

    def get(self, ref: str, before_load: Callable[[], None] = lambda: None) -> LoadedModel:
        """The model loaded (on first use); for a plain name without a pin, an older version
        when the newer ones fail to load for good. `before_load` runs, under the load lock, just
        before each load this call makes (not when another call loads it meanwhile); what it
        raises, the call raises, loading nothing."""
        name, version = refs.parse_ref(ref)
        if version is not None or name in BUILTIN_MODELS or self.pinned(name) is not None:
            return self._get(self.spec(ref), before_load)
        for candidate in reversed(self.versions(name)):
            spec = self.spec(f"{name}@{candidate}")
            try:
                return self._get(spec, before_load)
            except ModelNotReady:
                if spec.ref not in self._failures:  # may pass: say so rather than serve an older one
                    raise
        raise ModelNotReady(f"no version of {name!r} can be served: "
                            f"{'; '.join(f'{key}: {why}' for key, why in self._failures.items() if key.startswith(name + '@'))}")

    def _fail(self, ref: str, detail: str) -> None:
        self._failures[ref], self._failed_at[ref] = detail, time.monotonic()

    def _forget_stale_failure(self, ref: str) -> None:
        failed_at = self._failed_at.get(ref)
        if failed_at is not None and time.monotonic() - failed_at >= RETRY_FAILED_LOAD_SECONDS:
            self._failures.pop(ref, None)
            self._failed_at.pop(ref, None)

    def _get(self, spec: ModelSpec, before_load: Callable[[], None]) -> LoadedModel:
        loaded = self._touch(spec.ref)
        if loaded is not None:
            return loaded
        self._forget_stale_failure(spec.ref)
        if spec.ref in self._failures:
            raise ModelNotReady(f"model {spec.ref!r} is not served: {self._failures[spec.ref]}")
        with self._lock:
            if spec.ref in self._failures:  # another request failed to load it while we waited
                raise ModelNotReady(f"model {spec.ref!r} is not served: {self._failures[spec.ref]}")
            if spec.ref not in self._loaded:
                before_load()
                try:
                    self._load(spec)
                except GazerError:
                    raise
                except (OSError, MemoryError, torch.OutOfMemoryError) as error:  # may pass: try again later
                    log.exception("model %s failed to load", spec.ref)
                    raise ModelNotReady(f"model {spec.ref!r} could not be loaded now: {_without_cause(error)}") \
                        from None
                except Exception as error:  # a corrupt file fails the same way each time: not tried per request
                    log.exception("model %s failed to load", spec.ref)
                    self._fail(spec.ref, f"loading failed: {_without_cause(error)}")
                    raise ModelNotReady(f"model {spec.ref!r} is not served: {self._failures[spec.ref]}") from None
            with self._order_lock:
                loaded = self._loaded.get(spec.ref)
                self._evict(keep=spec.ref)
            if loaded is None:  # deleted meanwhile
                raise UnknownModel(f"model {spec.ref!r} was deleted")
            return loaded

    def _evict(self, keep: str) -> None:
        """Unload the least recently used models beyond `max_loaded`, never `keep` or a resident one."""
        evictable = [ref for ref, model in self._loaded.items() if ref != keep and model.spec.id not in self.resident]
        while len(self._loaded) > self.max_loaded and evictable:
            evicted = evictable.pop(0)
            del self._loaded[evicted]
            log.info("model %s unloaded (least recently used; GAZER_MAX_LOADED_MODELS=%d)", evicted, self.max_loaded)

    def load_network(self, ref: str) -> tuple[ModelSpec, nn.Module]:
        """A fresh CPU copy of a model's network (for training from it)."""
        spec = self.spec(ref)
        if spec.id in BUILTIN_MODELS:
            return catalog.load_builtin(spec.id)
        if spec.architecture == ONNX_ARCHITECTURE:
            raise InvalidRequest(f"model {spec.ref!r} is served from ONNX alone: it has no torch network to "
                                 f"train or to take gradients of", field="model")
        return spec, versions.load_weights(self.storage.models, spec, build_for(spec))

    def _load(self, spec: ModelSpec) -> None:
        if spec.architecture == ONNX_ARCHITECTURE:
            self._store(self._onnx_only(spec))
            return
        spec, network = self.load_network(spec.ref)
        device = torch_device()
        half = self.onnx_fp16 and device.type == "cuda" and spec.id in BUILTIN_MODELS
        if spec.id in BUILTIN_MODELS:
            onnx_file = ensure_onnx(network, spec, self.storage.onnx_cache, half=half)
        else:
            onnx_file = versions.version_dir(self.storage.models, spec.id, spec.version) / versions.ONNX
        predictor = OnnxPredictor(onnx_file, self.batching.max_batch)
        try:  # on the CPU, in IEEE float32: cuDNN's convolutions use TF32 unless told otherwise
            check_agreement(network, predictor, spec.input_size,
                            FP16_AGREEMENT_TOLERANCE if half else AGREEMENT_TOLERANCE)
        except ModelNotReady as refused:
            self._fail(spec.ref, refused.detail)
            log.error("model %s: %s", spec.ref, refused.detail)
            raise ModelNotReady(f"model {spec.ref!r} is not served: {refused.detail}") from None
        # After the check, which compares the file with the weights: the layout changes only
        # rounding, yet on a random input whose logits reach 1e4 (a torchvision EfficientNet-B0
        # with test-made weights) that rounding alone reached 0.7x the check's tolerance.
        forward_cost = relative_cost(network_flops(network, spec.input_size))
        network = fast_layout(network.to(device))
        maps = targetable_maps(network, spec.input_size)
        gates = spatial_gates(network)
        methods = supported_methods(spec.linear_head, bool(gates), gradients=True, guided=guides(network))
        self._store(LoadedModel(spec, network, predictor, {name: channels for name, (channels, _) in maps.items()},
                                device, methods, attention_modules(network), gates, self.batching, self.bfloat16,
                                {name: positions for name, (_, positions) in maps.items()}, forward_cost))
        log.info("model %s loaded (providers %s)", spec.ref, predictor.providers)

    def _store(self, model: LoadedModel) -> None:
        with self._order_lock:
            self._loaded[model.spec.ref] = model

    def _onnx_only(self, spec: ModelSpec) -> LoadedModel:
        onnx_file = versions.version_dir(self.storage.models, spec.id, spec.version) / versions.ONNX
        # Uploaded before the sizes were kept: checked at 1, 3 and a GAZER_MAX_BATCH that may
        # since have changed; 1 and 3 are sure (a new upload of the file runs at larger sizes).
        batch_sizes = spec.batch_sizes or (1, 3)
        if spec.flops is None:
            log.warning("model %s was uploaded before its FLOPs were counted: its forward counts as "
                        "EfficientNet-Lite0's in the explain budget until it is uploaded again", spec.ref)
        return LoadedModel(spec, None, OnnxPredictor(onnx_file, self.batching.max_batch, batch_sizes), {},
                           torch.device("cpu"), supported_methods(False, False, gradients=False), [], [], self.batching,
                           forward_cost=relative_cost(spec.flops, spec.time_ratio))

    def register_network(self, spec: ModelSpec, network: nn.Module, metrics: dict | None = None) -> ModelSpec:
        """Publish a new version of `spec.id` with its ONNX export, unless its torch and ONNX
        Runtime logits disagree (or are not finite): then InvalidRequest says why."""
        return versions.save_version(self.storage.models, spec, network, metrics or {},
                                     agreeing_export(network, spec.input_size))

    def register_checked(self, name: str, check: Callable[[Path], ModelSpec]) -> ModelSpec:
        """Publish a new version of `name` whose files `check(staging)` writes (versions.save_checked_version)."""
        return versions.save_checked_version(self.storage.models, name, check)

    def register_onnx(self, spec: ModelSpec, onnx_model: bytes) -> ModelSpec:
        return versions.save_onnx_version(self.storage.models, spec, onnx_model)

    def delete(self, ref: str) -> None:
        """`NAME@VERSION`: that version; a plain `NAME`: every version it has now (one another
        request deletes meanwhile is skipped, one a job or upload publishes meanwhile stays),
        then its pin."""
        name, version = refs.parse_ref(ref)
        if name in BUILTIN_MODELS:
            raise Conflict(f"{name!r} is built in and cannot be deleted", field="model")
        if version is not None:
            self._delete_version(name, version)
            return
        for number in self.versions(name):
            with suppress(UnknownModel):
                self._delete_version(name, number)
        versions.unpin(self.storage.models, name)

    def _delete_version(self, name: str, version: int) -> None:
        spec = self.spec(f"{name}@{version}")
        versions.delete_version(self.storage.models, name, version)
        with self._order_lock:
            self._loaded.pop(spec.ref, None)
        self._failures.pop(spec.ref, None)
        self._failed_at.pop(spec.ref, None)
        self._specs.pop(spec.ref, None)

    def pin(self, name: str, version: int) -> None:
        if name in BUILTIN_MODELS:
            raise Conflict(f"{name!r} is built in: it has only version 1", field="model")
        available = self.versions(name)
        if version not in available:
            raise InvalidRequest(f"model {name!r} has no version {version}; versions: {available}", field="version")
        versions.pin_version(self.storage.models, name, version)

    def unpin(self, name: str) -> None:
        """A plain `name` means its newest version that loads again."""
        if name in BUILTIN_MODELS:
            raise Conflict(f"{name!r} is built in: it has only version 1", field="model")
        if not self.versions(name):
            raise UnknownModel(f"unknown model {name!r}")
        versions.unpin(self.storage.models, name)

    def state(self, ref: str) -> dict[str, object]:
        """`ready` (with its version), `failed` (with the reason, until it is tried again) or `not_loaded`."""
        ref = self.spec(ref).ref
        self._forget_stale_failure(ref)
        loaded = self._loaded.get(ref)
        if loaded is not None:
            return {"state": "ready", "version": loaded.spec.version}
        if ref in self._failures:
            return {"state": "failed", "reason": self._failures[ref]}
        return {"state": "not_loaded"}

    def status(self) -> dict[str, dict[str, object]]:
        found = {}
        for model_id in self.model_ids():
            with suppress(UnknownModel):  # deleted since it was listed
                found[model_id] = self.state(model_id)
        return found


def _without_cause(error: Exception) -> str:
    """What clients are told of a load's failure: its kind, not its message, which names server
    paths (the log has it all)."""
    return f"{type(error).__name__} (the server log has the cause)"


def agreeing_export(network: nn.Module, input_size: int) -> Callable[[Path], None]:
    """A check of `network`'s ONNX export: InvalidRequest unless ONNX Runtime loads it and agrees
    with torch (check_agreement)."""
    def verify(onnx_file: Path) -> None:
        try:
            predictor = OnnxPredictor(onnx_file)
        except Exception as error:  # onnxruntime's own exception types
            raise InvalidRequest(f"ONNX Runtime cannot load the exported model: {str(error)[:300]}") from None
        try:
            check_agreement(network, predictor, input_size)
        except ModelNotReady as refused:
            raise InvalidRequest(f"the model is refused: {refused.detail}") from None

    return verify


def check_agreement(network: nn.Module, predictor: OnnxPredictor, input_size: int,
                    tolerance: float = AGREEMENT_TOLERANCE) -> float:
    """The largest torch-vs-ONNX Runtime logit difference, or ModelNotReady saying why it is
    too large (NaN or infinite logits count as disagreeing)."""
    difference, largest = max_logit_difference(network, predictor, input_size)
    if difference == float("inf"):
        raise ModelNotReady("its logits are NaN or infinite; not served")
    if difference > tolerance * max(1.0, largest):
        raise ModelNotReady(f"torch and ONNX Runtime logits differ by {difference:.2e} (tolerance "
                            f"{tolerance:.0e} x {max(1.0, largest):.3g}, the largest logit); not served")
    return difference
