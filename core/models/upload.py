"""A user's own model, registered as a new version: a torchvision or timm architecture with
safetensors weights, here, or a self-contained ONNX classifier (onnx_upload), with what both
check (the name, the preprocessing, the classes) and the spec they make. Nothing is unpickled
and no code from the user runs: weights are plain tensors."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from core import errors as errors_module
from core.errors import Conflict, GazerError, InvalidRequest
from core.models.checking_process import child_answer
from core.models.adapted import TIMM_PREFIX, adapt, classifier_name, construct_on_meta, torchvision_architectures
from core.models.layers import feeds_a_linear_head, targetable_layers
from core.models.spec import ModelSpec
from core.names import BUILTIN_MODELS, MAX_INDEX
from core.params import check_params, param
from core.storage import check_name

# Layers only built for training (torchvision's Inception auxiliary classifier): not served.
_TRAINING_ONLY_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")


# torchvision's convention, the defaults of what an upload does not say (but for a timm model's)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875  # of the short side that the centre crop keeps


@dataclass(frozen=True)
class Preprocessing:
    """torchvision's convention: pixels scaled to 0..1, then (x - mean) / std. What is not given
    (None) is the architecture's (with_defaults)."""

    mean: tuple[float, float, float] | None = param(None, min_length=3, max_length=3,
                                                    doc="per channel (RGB), pixels in 0..1")
    std: tuple[float, float, float] | None = param(None, min_length=3, max_length=3,
                                                   doc="per channel (RGB), pixels in 0..1")
    input_size: int | None = param(None, ge=32, le=1024, doc="default the architecture's (299 for Inception v3)")
    resize_size: int | None = param(None, ge=32, le=2048, doc="short side before the centre crop")
    interpolation: Literal["bilinear", "bicubic"] | None = param(None)


def with_defaults(preprocessing: Preprocessing, input_size: int, network: nn.Module | None = None) -> Preprocessing:
    """`preprocessing` at `input_size`, what it does not say taken from a timm network's own
    data config (`pretrained_cfg`: its mean, std, interpolation and crop fraction, which timm's
    transforms follow; Inception and Xception are normalized by 0.5), else torchvision's convention
    (ImageNet's mean and std, bilinear, round(input_size / 0.875))."""
    config = getattr(network, "pretrained_cfg", None) or {}
    crop = config.get("crop_pct")
    resize = math.floor(input_size / crop) if crop else round(input_size / CROP_FRACTION)  # timm's, torchvision's
    interpolation = config.get("interpolation")
    return replace(preprocessing, input_size=input_size,
                   mean=preprocessing.mean or tuple(config.get("mean", IMAGENET_MEAN)),
                   std=preprocessing.std or tuple(config.get("std", IMAGENET_STD)),
                   resize_size=preprocessing.resize_size or resize,
                   interpolation=preprocessing.interpolation
                   or (interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"))


def check_preprocessing(preprocessing: Preprocessing) -> None:
    for field, values in (("mean", preprocessing.mean), ("std", preprocessing.std)):
        if values is not None and len(values) != 3:
            raise InvalidRequest(f"{field} takes 3 numbers, one per channel (RGB), comma-separated (0.5,0.5,0.5) or "
                                 f"the field repeated; got {len(values)}: {values}", field=field)
        if values is not None and all(map(math.isfinite, values)) and max(map(abs, values)) > 10:
            raise InvalidRequest(f"{field} is for pixels in 0..1; got {values} (for pixels in 0..255, divide by "
                                 f"255)", field=field)
    check_params(preprocessing)
    for field, values in (("mean", preprocessing.mean), ("std", preprocessing.std)):
        if values is not None and not all(math.isfinite(value) and (0 < value <= 10 if field == "std" else
                                                                     abs(value) <= 10) for value in values):
            raise InvalidRequest(f"{field} must be 3 finite numbers ({'0 < std <= 10' if field == 'std' else '|mean| <= 10'})"
                                 f"; got {values}", field=field)


def check_model_name(name: str) -> str:
    check_name(name, "name")
    if name.casefold() in BUILTIN_MODELS:  # EfficientNet_Lite0 too: a look-alike, easily taken for it
        raise Conflict(f"{name!r} is a built-in model's name; choose another", field="name")
    return name


TORCHVISION_TRANSFORMERS = ("vit_", "swin_")


def check_architecture(architecture: str) -> str:
    if architecture.startswith(TIMM_PREFIX):
        import timm

        name = architecture[len(TIMM_PREFIX):]
        if timm.is_model(name):
            base, tag = timm.models.split_model_name_tag(name)
            tagged = timm.list_models(include_tags=True)  # no pattern: a tag of "*" matched every one
            if tag and name not in tagged:  # is_model takes any tag; building the model does not
                tags = [known.partition(".")[2] for known in tagged if known.partition(".")[0] == base]
                raise InvalidRequest(f"timm's {base} has no tag {tag!r}: leave the tag out"
                                     + (f", or use one of {', '.join(tags[:20])}" if tags else ""),
                                     field="architecture")
            return architecture
    elif architecture.startswith(TORCHVISION_TRANSFORMERS):
        raise InvalidRequest(f"{architecture!r} is a vision transformer, which is not supported: its explanations "
                             f"would land on the patch embedding; use a convolutional network", field="architecture")
    elif architecture in torchvision_architectures():
        return architecture
    raise InvalidRequest(f"unknown architecture {architecture!r}: use a torchvision classification builder "
                         f"(resnet50, vgg16_bn, mobilenet_v3_large, inception_v3, densenet121, efficientnet_b0, "
                         f"convnext_tiny, ...) or timm:NAME", field="architecture")


def _names_hint(architecture: str, state: dict[str, torch.Tensor], expected: set[str]) -> str:
    """What to do about weights whose names are not `architecture`'s: a prefix on every name
    (`module.` from DataParallel, `model.` from a Lightning module), or timm's names."""
    first = {name.partition(".")[0] + "." for name in state}
    if len(first) == 1 and (prefix := first.pop()) and {name.removeprefix(prefix) for name in state} & expected:
        return (f"; every name starts with {prefix!r}: save the network's own state dict (model.module.state_dict() "
                f"for DataParallel), or the names without {prefix!r}")
    return _timm_hint(architecture, state)


def _timm_hint(architecture: str, state: dict[str, torch.Tensor]) -> str:
    """Where torchvision's `architecture` refused weights whose names are those of timm's model of
    that name (built on the meta device: names only)."""
    import timm

    if architecture.startswith(TIMM_PREFIX) or not timm.is_model(architecture):
        return ""
    with torch.device("meta"):
        names = set(timm.create_model(architecture, pretrained=False).state_dict())
    return f"; timm's weights? architecture={TIMM_PREFIX}{architecture}" if names == set(state) else ""


# Far beyond a CNN's state dict (torchvision's DenseNet-201: 1 207 tensors)
MAX_TENSORS = 20_000


def read_state_dict(blob: bytes) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file; a pickle of any kind is refused without being opened, and
    a file of over MAX_TENSORS tensors before they are made (300 000 empty ones, 17.6 MB, took
    4.4 s and 1 GB)."""
    if blob[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or blob[:4] == b"PK\x03\x04":
        raise InvalidRequest("weights look like a pickle (torch.save: .pt, .pth, .bin); pickles are never "
                             "opened here: save a state dict with safetensors.torch.save_file", field="weights")
    # the header, JSON, holds an object per tensor: its braces are structure, which no escape can
    # write (a key can: "data_offset\u0073" is "data_offsets"); braces in names only count more
    header_end = 8 + int.from_bytes(blob[:8], "little")
    if header_end > len(blob) or blob[8:9] != b"{":  # an ONNX file's bytes read as a length counted its braces
        raise InvalidRequest("weights are not a .safetensors file (an 8-byte header length, then a JSON header); "
                             "an ONNX file goes in the onnx field, with no architecture", field="weights")
    if blob.count(b"{", 8, header_end) - 1 > MAX_TENSORS:
        raise InvalidRequest(f"the weights hold over {MAX_TENSORS} tensors: far more than a network's",
                             field="weights")
    try:
        return load_safetensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise InvalidRequest(f"weights are not a valid .safetensors file: {error}", field="weights") from None
    except KeyError as error:  # a dtype the safetensors format has and torch lacks (F8_E8M0, F4, F6_E2M3)
        raise InvalidRequest(f"the weights hold a dtype torch cannot load: {error}; save them in float32",
                             field="weights") from None


def check_class_count(classes: int, field: str) -> int:
    """At least two classes (the softmax of one is always 1: a sigmoid classifier's one logit
    ranked every image 100% its class), and no more than a target may name."""
    if classes == 1:
        raise InvalidRequest("the model has 1 output, whose softmax is always 1: a served model's outputs are one "
                             "logit per class; for a sigmoid classifier, output the logits (0, z)", field=field)
    if not 2 <= classes <= MAX_INDEX:
        raise InvalidRequest(f"the model has {classes} classes; a served model has 2 to {MAX_INDEX}", field=field)
    return classes


def _check_fit(architecture: str, expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
               classifier: str) -> None:
    """The uploaded tensors are the architecture's, with the same shapes (the classifier's rows
    aside: they are the classes). BatchNorm's step counts may be left out, as torch's strict
    loading allows: evaluation never reads them."""
    missing = sorted(key for key in set(expected) - set(state) if not key.endswith(".num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    rows = state[f"{classifier}.weight"].shape[0]

    def shape(key: str) -> tuple[int, ...]:
        wanted = tuple(expected[key].shape)
        return (rows, *wanted[1:]) if key.startswith(classifier + ".") else wanted

    wrong = sorted(key for key in set(expected) & set(state) if shape(key) != tuple(state[key].shape))
    if missing or unexpected or wrong:
        hint = _names_hint(architecture, state, set(expected)) if missing or unexpected else ""  # same names
        shapes = [f"{key} {tuple(state[key].shape)} where {architecture} has {shape(key)}" for key in wrong[:5]]
        raise InvalidRequest(f"weights do not fit {architecture}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                             f"other shapes [{'; '.join(shapes)}]{hint}", field="weights")
    check_class_count(rows, "weights")
    # load_state_dict casts what it copies: integers, booleans or complex numbers would be served as
    # other weights than those sent
    not_floats = sorted(key for key in set(expected) & set(state)
                      if expected[key].is_floating_point() and not state[key].is_floating_point())
    if not_floats:
        given = ", ".join(f"{key} {str(state[key].dtype).removeprefix('torch.')}" for key in not_floats[:5])
        raise InvalidRequest(f"weights are not all floating-point numbers, as the network's are: {given}",
                             field="weights")


def default_input_size(architecture: str, network: nn.Module) -> int:
    """`network`: the architecture as `construct` builds it."""
    config = getattr(network, "pretrained_cfg", None) or {}
    if "input_size" in config:  # timm
        return int(config["input_size"][-1])
    return 299 if architecture == "inception_v3" else 224


def labels_for(labels: list[str] | None, num_classes: int) -> tuple[str, ...]:
    if labels is None:
        return tuple(str(index) for index in range(num_classes))
    if len(labels) != num_classes:
        raise InvalidRequest(f"labels holds {len(labels)} line(s), one class name each; the classifier has "
                             f"{num_classes} classes", field="labels")
    return tuple(labels)


def resize_short_side(preprocessing: Preprocessing, input_size: int) -> int:
    """The short side before the centre crop: as given, else the crop's over 0.875; checked
    before anything is built or run."""
    resize_size = preprocessing.resize_size or round(input_size / CROP_FRACTION)
    if resize_size < input_size:
        raise InvalidRequest(f"resize_size {resize_size} is smaller than input_size {input_size}",
                             field="resize_size")
    return resize_size


def uploaded_spec(name: str, architecture: str, labels: tuple[str, ...], preprocessing: Preprocessing,
                  input_size: int, cam_layer: str, classifier_layer: str, linear_head: bool,
                  description: str) -> ModelSpec:
    """`preprocessing`: with_defaults'."""
    resize_size = resize_short_side(preprocessing, input_size)
    return ModelSpec(
        id=name, version=0, architecture=architecture, labels=labels, input_size=input_size,
        mean=tuple(255.0 * value for value in preprocessing.mean), std=tuple(255.0 * value for value in preprocessing.std),
        resize_margin=resize_size - input_size, interpolation=preprocessing.interpolation, cam_layer=cam_layer,
        classifier_layer=classifier_layer, linear_head=linear_head, torchvision_resize=True, description=description)


def torch_model(name: str, architecture: str, weights: bytes, labels: list[str] | None,
                preprocessing: Preprocessing, cam_layer: str | None = None) -> tuple[ModelSpec, nn.Module]:
    """The network with the uploaded weights, and its spec (version 0: the registry numbers it)."""
    check_model_name(name)
    check_architecture(architecture)
    check_preprocessing(preprocessing)
    state = {key: value for key, value in read_state_dict(weights).items()
             if not key.startswith(_TRAINING_ONLY_PREFIXES)}
    try:
        probe = construct_on_meta(architecture)  # nothing is allocated before the weights are known to fit
    except NotImplementedError as error:  # a builder that the meta device cannot run (every one today can)
        raise InvalidRequest(f"{architecture} cannot be described before it is built ({error}), and is not built "
                             f"for weights not yet known to fit it", field="architecture") from None
    classifier = classifier_name(probe)
    if f"{classifier}.weight" not in state or state[f"{classifier}.weight"].dim() != 2:
        raise InvalidRequest(f"weights have no 2-D {classifier + '.weight'!r}: not a state dict of {architecture}"
                             f"{_names_hint(architecture, state, set(probe.state_dict()))}", field="weights")
    _check_fit(architecture, probe.state_dict(), state, classifier)
    num_classes = state[f"{classifier}.weight"].shape[0]
    preprocessing = with_defaults(preprocessing, preprocessing.input_size or default_input_size(architecture, probe),
                                  probe)
    input_size = preprocessing.input_size
    resize_short_side(preprocessing, input_size)
    try:
        network = adapt(architecture, num_classes, input_size)
        network.load_state_dict(state, strict=False)
        network.eval()
        with torch.no_grad():
            example = torch.rand(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
            finite = bool(torch.isfinite(network(example)).all())
        layer = cam_layer or network.anatomy.cam_layer
        layers = targetable_layers(network, input_size)
        targetable = layer in layers
        linear = targetable and layer == network.anatomy.cam_layer and finite and feeds_a_linear_head(
            network, layer, network.anatomy.classifier_layer, input_size)
    except MemoryError:
        raise
    except GazerError:
        raise
    except Exception as error:  # the network cannot run at this size (too small, a transformer's fixed size, ...)
        raise InvalidRequest(f"{architecture} cannot run at {input_size}x{input_size}: {type(error).__name__}: "
                             f"{str(error)[:300]}", field="input_size") from None
    if not finite:
        raise InvalidRequest("the model's logits are NaN or infinite", field="weights")
    if not targetable:
        raise InvalidRequest(f"cam_layer {layer!r} is not a layer that outputs a feature map larger than 1 x 1 "
                             f"once per forward at {input_size}x{input_size}", field="cam_layer", valid=list(layers))
    anatomy = network.anatomy
    spec = uploaded_spec(name, architecture, labels_for(labels, num_classes), preprocessing, input_size, layer,
                         anatomy.classifier_layer, linear, f"{architecture} uploaded as {name}")
    return spec, network


@dataclass(frozen=True)
class WeightsCheckLimits:
    """What an uploaded torch model's check (weights_check: its build, first runs, export and
    agreement) may cost: memory beyond the checking process's own, and seconds."""

    memory_bytes: int
    seconds: float


def checked_torch_model(staging: Path, name: str, architecture: str, weights: bytes, labels: list[str] | None,
                        preprocessing: Preprocessing, cam_layer: str | None, limits: WeightsCheckLimits) -> ModelSpec:
    """torch_model, then its weights and ONNX export written into `staging` (versions.write_network),
    in a child process capped at `limits`; the spec. What needs no torch is checked here first."""
    from core.models import weights_check

    check_model_name(name)
    check_architecture(architecture)
    check_preprocessing(preprocessing)
    request = {"name": name, "architecture": architecture, "labels": labels, "cam_layer": cam_layer,
               "preprocessing": {field: getattr(preprocessing, field) for field in Preprocessing.__dataclass_fields__}}
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "request.json").write_text(json.dumps(request))
        answer = child_answer([weights_check.__name__, str(limits.memory_bytes), str(Path(folder) / "request.json")],
                               Path(folder), staging, limits.seconds, "weights", "the weights check", stdin=weights,
                               most=-1,  # the spec, with every label the upload gave
                               too_long=f"building, running and exporting {architecture} took longer than "
                                        f"{limits.seconds:g} s (GAZER_WEIGHTS_CHECK_SECONDS)")
    error = answer.get("error")
    if error == "memory":
        raise InvalidRequest(f"building, running and exporting {architecture} needed more than "
                             f"{limits.memory_bytes / 2**20:.0f} MiB of memory (GAZER_WEIGHTS_CHECK_MEMORY_BYTES)",
                             field="weights")
    if error is not None:
        kind = getattr(errors_module, error["kind"], None)
        if not (isinstance(kind, type) and issubclass(kind, GazerError)):
            raise RuntimeError(f"the weights check failed with an unknown {error['kind']}: {error['detail']}")
        raise kind(error["detail"], **error["extra"])
    return ModelSpec.from_json(json.dumps(answer["spec"]))
