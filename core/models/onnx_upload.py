"""An uploaded ONNX classifier, checked before it is served: a self-contained file of standard
operators only (no external data, which could point at any file on the server; no control flow,
no shape set by the pixels' values), its protobuf messages counted before it is parsed, and
runs of it in a child process capped in memory and time (onnx_probe), which also count its FLOPs
and time it against the explain budget's reference."""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from core.errors import InvalidRequest
from core.models import onnx_probe
from core.models.checking_process import child_answer
from core.models.spec import ModelSpec
from core.models.upload import Preprocessing, check_class_count, check_model_name, check_preprocessing, labels_for, \
    resize_short_side, uploaded_spec, with_defaults
from core.names import ONNX_ARCHITECTURE
from core.params import check_params

_STANDARD_ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


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
    """A first output made by Softmax, Sigmoid or HardSigmoid holds probabilities, which would be
    served as logits and pass through softmax again (a top class at 0.40 instead of 0.53; a sigmoid's
    0.33 served as 0.23, and no word of it). LogSoftmax's are logits as good as any. Nodes are in
    order (_check_operators), so the walk ends. This names the node; the check's runs refuse any
    output of probabilities that sum to 1 (onnx_probe), however made."""
    made_by = {output: node for node in graph.node for output in node.output}
    node = made_by.get(graph.output[0].name)
    while node is not None and node.op_type in _RESHAPING:
        node = made_by.get(node.input[0])
    if node is not None and node.op_type in ("Softmax", "Sigmoid", "HardSigmoid"):
        final = node.op_type.lower()
        raise InvalidRequest(f"the ONNX classifier's first output comes from a {node.op_type} node ({node.name!r}): "
                             f"probabilities, which would be served as logits and pass through softmax again; "
                             f"export the network without its final {final} (logits out)", field="onnx")


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
    if (element := inputs[0].type.tensor_type.elem_type) != onnx.TensorProto.FLOAT:
        raise InvalidRequest(f"the ONNX input is {onnx.TensorProto.DataType.Name(element)}; the service feeds "
                             f"FLOAT (float32): export the model in float32", field="onnx")
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
    preprocessing = with_defaults(preprocessing, input_size)
    check_params(preprocessing)
    resize_short_side(preprocessing, input_size)
    declared = model.graph.output[0].type.tensor_type.shape.dim
    if len(declared) == 2 and declared[1].HasField("dim_value"):  # refused before any run where it says so
        check_class_count(declared[1].dim_value, "onnx")
    _check_logits_out(model.graph)
    _name_output_logits(model.graph)
    serialized = model.SerializeToString()
    answer = _check_runs(serialized, preprocessing, limits, reference)
    spec = uploaded_spec(name, ONNX_ARCHITECTURE, labels_for(labels, check_class_count(answer["classes"], "onnx")),
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
