"""A user's own model, registered as a new version: a torchvision or timm architecture with
safetensors weights, or a self-contained ONNX classifier. Nothing is unpickled and no code
from the user runs: weights are plain tensors, and an ONNX graph may use standard operators only
and no external data (which could point at any file on the server)."""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from core import errors as errors_module
from core.errors import Conflict, GazerError, InvalidRequest
from core.models import onnx_probe
from core.models.checking_process import child_answer
from core.models.adapted import TIMM_PREFIX, adapt, classifier_name, construct_on_meta, torchvision_architectures
from core.models.layers import feeds_a_linear_head, targetable_layers
from core.models.spec import ModelSpec
from core.names import BUILTIN_MODELS, MAX_INDEX, ONNX_ARCHITECTURE
from core.params import check_params, param
from core.storage import check_name

_STANDARD_ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
# Layers only built for training (torchvision's Inception auxiliary classifier): not served.
_TRAINING_ONLY_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")


@dataclass(frozen=True)
class Preprocessing:
    """torchvision's convention: pixels scaled to 0..1, then (x - mean) / std."""

    mean: tuple[float, float, float] = param((0.485, 0.456, 0.406), min_length=3, max_length=3,
                                             doc="per channel (RGB), pixels in 0..1")
    std: tuple[float, float, float] = param((0.229, 0.224, 0.225), min_length=3, max_length=3,
                                            doc="per channel (RGB), pixels in 0..1")
    input_size: int | None = param(None, ge=32, le=1024, doc="default the architecture's (299 for Inception v3)")
    resize_size: int | None = param(None, ge=32, le=2048, doc="short side before the centre crop; default "
                                                              "round(input_size / 0.875)")
    interpolation: Literal["bilinear", "bicubic"] = param("bilinear")


def check_preprocessing(preprocessing: Preprocessing) -> None:
    check_params(preprocessing)
    for field, values in (("mean", preprocessing.mean), ("std", preprocessing.std)):
        if not all(math.isfinite(value) and (0 < value <= 10 if field == "std" else abs(value) <= 10)
                   for value in values):
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
        hint = _timm_hint(architecture, state) if missing or unexpected else ""  # same names: not timm's
        raise InvalidRequest(f"weights do not fit {architecture}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                             f"other shapes {wrong[:5]}{hint}", field="weights")
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


def _labels(labels: list[str] | None, num_classes: int) -> tuple[str, ...]:
    if labels is None:
        return tuple(str(index) for index in range(num_classes))
    if len(labels) != num_classes:
        raise InvalidRequest(f"labels has {len(labels)} names; the classifier has {num_classes} classes",
                             field="labels")
    return tuple(labels)


def _resize_size(preprocessing: Preprocessing, input_size: int) -> int:
    """The short side before the centre crop: as given, else the crop's over 0.875; checked
    before anything is built or run."""
    resize_size = preprocessing.resize_size or round(input_size / 0.875)
    if resize_size < input_size:
        raise InvalidRequest(f"resize_size {resize_size} is smaller than input_size {input_size}",
                             field="resize_size")
    return resize_size


def _spec(name: str, architecture: str, labels: tuple[str, ...], preprocessing: Preprocessing, input_size: int,
          cam_layer: str, classifier_layer: str, linear_head: bool, description: str) -> ModelSpec:
    resize_size = _resize_size(preprocessing, input_size)
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
                             f"{_timm_hint(architecture, state)}", field="weights")
    _check_fit(architecture, probe.state_dict(), state, classifier)
    num_classes = state[f"{classifier}.weight"].shape[0]
    input_size = preprocessing.input_size or default_input_size(architecture, probe)
    _resize_size(preprocessing, input_size)
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
    spec = _spec(name, architecture, _labels(labels, num_classes), preprocessing, input_size, layer,
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


@dataclass(frozen=True)
class OnnxCheckLimits:
    """What an uploaded ONNX model's check may cost: memory beyond the checking process's own,
    and seconds. `max_batch`: the largest batch serving runs; the check runs each batch size of
    onnx_probe.batches(max_batch)."""

    memory_bytes: int
    seconds: float
    max_batch: int


def _messages(message) -> Iterator:
    """Every protobuf message inside `message`, itself included: initializers, sparse tensors,
    attributes, subgraphs and functions alike."""
    yield message
    for descriptor, value in message.ListFields():
        if descriptor.type == descriptor.TYPE_MESSAGE:
            for item in ([value] if hasattr(value, "ListFields") else value):  # one message, or a repeated field
                yield from _messages(item)


# Far beyond a real classifier's (torchvision's EfficientNet-B7 exported: 2 749); walking them
# costs the API process about 13 microseconds each.
MAX_ONNX_MESSAGES = 100_000
# Fields of any kind the count may read: a real export's numbers come packed, a field for all.
MAX_ONNX_FIELDS = 2_000_000
# Numbers in packed varint fields (int64_data, dims, ints): 1 byte each in the file, 4 or 8 parsed.
MAX_ONNX_PACKED_NUMBERS = 4_000_000
_BYTES_THAT_END_A_NUMBER = bytes(range(0x80))


def count_onnx_messages(blob: bytes) -> int:
    """The protobuf messages in an ONNX file, counted from its wire format (as ModelProto's fields
    say which hold messages) before protobuf parses it: an empty message costs 2 bytes of file and
    about 130 bytes parsed, so 30 MB of them took the API 1.9 GB. Stops past MAX_ONNX_MESSAGES.
    Refuses a file of over MAX_ONNX_FIELDS fields, and what no ONNX writer makes and the walk
    cannot bound: a number of over 10 bytes (protobuf's most), a group (skipped unparsed by protobuf,
    it could hide any number of nodes); and one of over MAX_ONNX_PACKED_NUMBERS numbers packed as
    varints (100 MB of zeros in an int64_data took 2 GB parsed). A file cut short ends the walk: the
    parser says what is wrong."""
    from google.protobuf.descriptor import FieldDescriptor
    from onnx import ModelProto

    def not_onnx(why: str) -> InvalidRequest:
        return InvalidRequest(f"not an ONNX file: {why}", field="onnx")

    def varint(position: int) -> tuple[int, int]:
        value = 0
        for shift in range(0, 70, 7):
            byte = blob[position]
            value |= (byte & 0x7F) << shift
            position += 1
            if byte < 0x80:
                return value, position
        raise not_onnx(f"a number of over 10 bytes at byte {position - 10}")

    varints = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_INT32,
               FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
               FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM}
    pending, messages, fields, packed = [(ModelProto.DESCRIPTOR, 0, len(blob))], 1, 0, 0
    try:
        while pending:
            descriptor, position, end = pending.pop()
            while position < end:
                key, position = varint(position)
                fields += 1
                if fields > MAX_ONNX_FIELDS:
                    raise InvalidRequest(f"the ONNX file holds over {MAX_ONNX_FIELDS} fields: far more than a "
                                         f"classifier's (a real export packs its numbers)", field="onnx")
                kind = key & 7
                if kind == 0:
                    _, position = varint(position)
                elif kind in (1, 5):
                    position += 8 if kind == 1 else 4
                elif kind == 2:
                    length, position = varint(position)
                    field = descriptor.fields_by_number.get(key >> 3)
                    if field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
                        messages += 1
                        if messages > MAX_ONNX_MESSAGES:
                            return messages
                        pending.append((field.message_type, position, min(position + length, end)))
                    elif field is not None and field.type in varints:  # packed: one number per last byte
                        run = blob[position:min(position + length, end)]
                        packed += len(run) - len(run.translate(None, _BYTES_THAT_END_A_NUMBER))
                        if packed > MAX_ONNX_PACKED_NUMBERS:
                            raise InvalidRequest(f"the ONNX file packs over {MAX_ONNX_PACKED_NUMBERS} integers "
                                                 f"outside raw_data, each parsed into 8 bytes: a real export keeps "
                                                 f"its tensors in raw_data", field="onnx")
                    position += length
                else:
                    raise not_onnx(f"a protobuf group or wire type {kind} at byte {position}, which ONNX "
                                   f"never writes")
    except IndexError:  # cut short: the parser says what is wrong
        pass
    return messages


def _check_onnx_graph(model) -> None:  # an onnx.ModelProto
    from onnx import AttributeProto, NodeProto, TensorProto

    for message in _messages(model):
        if isinstance(message, TensorProto) and (message.data_location == TensorProto.EXTERNAL
                                                 or len(message.external_data)):
            raise InvalidRequest(f"the ONNX file refers to external data ({message.name!r}); upload a "
                                 f"self-contained file", field="onnx")
        if isinstance(message, NodeProto) and any(attribute.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS)
                                                  for attribute in message.attribute):
            raise InvalidRequest(f"the ONNX file uses the control-flow operator {message.op_type} (node "
                                 f"{message.name!r}); Loop, Scan, If and other operators with subgraphs are not "
                                 f"served: their cost is not bounded by the input", field="onnx")
    if model.functions:
        raise InvalidRequest("the ONNX file defines local functions; export without them (torch.onnx's "
                             "dynamo=False does)", field="onnx")
    domains = {entry.domain for entry in model.opset_import} | {node.domain for node in model.graph.node}
    custom = sorted(domain for domain in domains if domain not in _STANDARD_ONNX_DOMAINS)
    if custom:
        raise InvalidRequest(f"the ONNX file uses custom operator domains {custom}; only standard operators "
                             f"are served", field="onnx")
    _check_operators(model.graph)


# What an uploaded ONNX graph may use (the standard domain): the operators of convolutional
# classifiers as torch.onnx and tf2onnx export them. Left out are those whose cost or output shape
# follows their inputs' values (NonZero, TopK, NonMaxSuppression, RoiAlign, RNNs, ...).
_OPERATORS = {
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "CastLike", "Ceil",
    "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "DepthToSpace", "Div",
    "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements",
    "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
    "GroupNormalization", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "InstanceNormalization", "IsInf",
    "IsNaN", "LRN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax",
    "LpNormalization", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mish", "Mul", "Neg", "Not",
    "Or", "PRelu", "Pad", "Pow", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape",
    "Resize", "Round", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Size", "Slice", "Softmax", "Softplus",
    "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "ThresholdedRelu", "Tile",
    "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor"}
# Inputs whose values set an operator's output shape: they may come from the file and from the
# input's shape (Shape, Size), not from the pixels' values. Every other operator above takes its
# output shape from its inputs' shapes and its attributes, so no shape depends on the pixels.
_SHAPE_INPUTS = {"ConstantOfShape": (0,), "Expand": (1,), "Tile": (1,), "Range": (0, 1, 2), "Resize": (1, 2, 3),
                 "Upsample": (1,), "Pad": (1, 3), "Reshape": (1,), "Slice": (1, 2, 3, 4), "Squeeze": (1,),
                 "Unsqueeze": (1,), "Split": (1,), **{name: (1,) for name in _OPERATORS if name.startswith("Reduce")}}


def _check_operators(graph) -> None:
    """Only _OPERATORS, in the order they run (each input made before, each name made once), and
    no shape set by the pixels' values: a run then costs the same for every image of a size, and
    the check's runs measure it."""
    from_pixels = {entry.name for entry in graph.input} - {initializer.name for initializer in graph.initializer}
    made = {entry.name for entry in graph.input} | {initializer.name for initializer in graph.initializer} | {""}
    for node in graph.node:
        where = f"the ONNX node {node.name!r} ({node.op_type})"
        if node.domain not in ("", "ai.onnx") or node.op_type not in _OPERATORS:
            raise InvalidRequest(f"{where} is not an operator served from an uploaded file: a convolutional "
                                 f"classifier's standard operators only", field="onnx")
        if any(name not in made for name in node.input):
            raise InvalidRequest(f"{where} comes before an input it needs, or needs one nothing makes", field="onnx")
        if any(name in made for name in node.output if name):
            raise InvalidRequest(f"{where} makes a value that already exists", field="onnx")
        if any(node.input[index] in from_pixels for index in _SHAPE_INPUTS.get(node.op_type, ())
               if index < len(node.input)):
            raise InvalidRequest(f"{where} takes its output's shape from the pixels' values: the cost of a run "
                                 f"would depend on the image", field="onnx")
        made.update(node.output)
        if node.op_type not in ("Shape", "Size") and any(name in from_pixels for name in node.input):
            from_pixels.update(node.output)


# operators that only move a tensor's values about: a Softmax behind them still made the output
_RESHAPING = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def _check_logits_out(graph) -> None:
    """A first output made by Softmax holds probabilities, which would be served as logits and
    pass through softmax again (a top class at 0.40 instead of 0.53, and no word of it).
    LogSoftmax's are logits as good as any. Nodes are in order (_check_operators), so the walk ends.
    This names the node; the check's runs refuse any output of probabilities (onnx_probe), however made."""
    made_by = {output: node for node in graph.node for output in node.output}
    node = made_by.get(graph.output[0].name)
    while node is not None and node.op_type in _RESHAPING:
        node = made_by.get(node.input[0])
    if node is not None and node.op_type == "Softmax":
        raise InvalidRequest(f"the ONNX classifier's first output comes from a Softmax node ({node.name!r}): "
                             f"probabilities, which would be served as logits and pass through softmax again; "
                             f"export the network without its final softmax (logits out)", field="onnx")


def _rename(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]
    for entry in [*graph.input, *graph.output, *graph.initializer, *graph.value_info]:
        if entry.name == old:
            entry.name = new


def _names(graph) -> set[str]:
    return {name for node in graph.node for name in [*node.input, *node.output]} | \
        {entry.name for entry in [*graph.input, *graph.output, *graph.initializer, *graph.value_info]}


def _name_output_logits(graph) -> None:
    """The first output is served as `logits`: a tensor of the graph that already has that
    name (the input, an inner tensor, another output) is renamed out of its way first."""
    first = graph.output[0].name
    if first == "logits":
        return
    names = _names(graph)
    if "logits" in names:
        _rename(graph, "logits", next(f"logits_{n}" for n in itertools.count(1) if f"logits_{n}" not in names))
    _rename(graph, first, "logits")


def onnx_model(name: str, blob: bytes, labels: list[str] | None, preprocessing: Preprocessing,
               limits: OnnxCheckLimits, reference: Path) -> tuple[ModelSpec, bytes]:
    """A checked ONNX classifier (its first output renamed `logits`) and its spec. `reference`:
    the explain budget's reference as ONNX (onnx_export.reference_onnx), which the check's runs
    are timed against."""
    import onnx

    check_model_name(name)
    check_preprocessing(preprocessing)
    if count_onnx_messages(blob) > MAX_ONNX_MESSAGES:
        raise InvalidRequest(f"the ONNX file holds over {MAX_ONNX_MESSAGES} nodes, tensors, attributes and "
                             f"other entries: far more than a classifier's", field="onnx")
    try:
        model = onnx.load_from_string(blob)
    except Exception as error:  # protobuf's DecodeError and friends
        raise InvalidRequest(f"not an ONNX file: {type(error).__name__}", field="onnx") from None
    _check_onnx_graph(model)
    initializers = {initializer.name for initializer in model.graph.initializer}
    inputs = [entry for entry in model.graph.input if entry.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) < 1:
        raise InvalidRequest("the ONNX classifier must take one input (NCHW float32) and return logits first",
                             field="onnx")
    dims = inputs[0].type.tensor_type.shape.dim
    fixed = [dim.dim_value if dim.HasField("dim_value") else None for dim in dims]
    if len(fixed) != 4 or fixed[1] not in (3, None) or (fixed[1] is None and fixed[3] == 3):
        channels_last = " (channels last, NHWC?)" if len(fixed) == 4 and fixed[3] == 3 else ""
        raise InvalidRequest(f"the ONNX input must be NCHW with 3 channels; it is {fixed}{channels_last}",
                             field="onnx")
    if fixed[0] is not None:
        raise InvalidRequest(f"the ONNX input's batch dimension is fixed at {fixed[0]}; export it dynamic "
                             f"(dynamic_axes)", field="onnx")
    input_size = preprocessing.input_size or fixed[2] or 224
    if fixed[2] not in (None, input_size) or fixed[3] not in (None, input_size):
        raise InvalidRequest(f"the ONNX input is {fixed[2]}x{fixed[3]}, not {input_size}", field="input_size")
    check_params(replace(preprocessing, input_size=input_size))
    _resize_size(preprocessing, input_size)
    declared = model.graph.output[0].type.tensor_type.shape.dim
    if len(declared) == 2 and declared[1].HasField("dim_value"):  # refused before any run where it says so
        check_class_count(declared[1].dim_value, "onnx")
    _check_logits_out(model.graph)
    _name_output_logits(model.graph)
    serialized = model.SerializeToString()
    answer = _check_runs(serialized, replace(preprocessing, input_size=input_size), limits, reference)
    spec = _spec(name, ONNX_ARCHITECTURE, _labels(labels, check_class_count(answer["classes"], "onnx")),
                 preprocessing, input_size, "", "", False, f"ONNX classifier uploaded as {name}")
    return replace(spec, batch_sizes=onnx_probe.batches(limits.max_batch), flops=answer["flops"],
                   time_ratio=answer["time_ratio"]), serialized


def _check_runs(serialized: bytes, preprocessing: Preprocessing, limits: OnnxCheckLimits, reference: Path) -> dict:
    """onnx_probe's answer: the number of classes, from runs on batches of random pixels normalized
    by `preprocessing` (onnx_probe.batches) timed against the `reference` ONNX file (time_ratio),
    and one image's FLOPs (flops.onnx_flops), from a child process capped at `limits.memory_bytes`
    and killed after `limits.seconds`. The file lies alone in an empty folder: no path in it can
    resolve to anything of ours (checking_process)."""
    memory = f"{limits.memory_bytes / 2**20:.0f} MiB"
    *fewer, most = onnx_probe.batches(limits.max_batch)
    sizes = f"{', '.join(map(str, fewer))} and {most}" if fewer else str(most)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "model.onnx").write_bytes(serialized)
        argv = [onnx_probe.__name__, "model.onnx", str(preprocessing.input_size), str(limits.max_batch),
                str(limits.memory_bytes), str(reference), ",".join(map(str, preprocessing.mean)),
                ",".join(map(str, preprocessing.std))]
        answer = child_answer(argv, Path(folder), Path(folder), limits.seconds, "onnx", "the ONNX check",
                              too_long=f"ONNX Runtime took longer than {limits.seconds:g} s on batches of {sizes} "
                                       f"images (GAZER_ONNX_CHECK_SECONDS)")
    error = answer.get("error", "")
    if error == "memory" or any(words in error for words in onnx_probe.OUT_OF_MEMORY_WORDS):
        raise InvalidRequest(f"ONNX Runtime needed more than {memory} of memory to load the model and run batches "
                             f"of {sizes} images (GAZER_ONNX_CHECK_MEMORY_BYTES, GAZER_MAX_BATCH)", field="onnx")
    if error:
        raise InvalidRequest(error, field="onnx")
    return answer
