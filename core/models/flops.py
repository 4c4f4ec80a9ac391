"""What one image's forward pass costs: twice the multiply-adds of its convolutions and matrix
products, which are nearly all of a CNN's, counted by torch on a forward of the network
(network_flops), or from the shapes on a run of an uploaded ONNX graph (onnx_flops). The explain
budget counts forward passes of EfficientNet-Lite0 at 224 (REFERENCE_FLOPS); a forward of a
larger model counts as many of those as it costs (relative_cost): for an uploaded ONNX graph, as
many as its FLOPs or its time on the check's runs (relative_time), whichever is more."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.runtime.denormals import flush_denormals_in

REFERENCE_ARCHITECTURE, REFERENCE_INPUT_SIZE = "efficientnet_lite0", 224
# The reference, as network_flops counts it (tests/unit/test_flops.py).
REFERENCE_FLOPS = 770_375_104
# The batch sizes an uploaded graph's FLOPs are counted at: one whose count per image grows
# between them is refused (onnx_probe), as its cost would grow with the batch.
COUNTED_BATCHES = (1, 2)
# Operators that read nothing of their input but its shape.
_SHAPE_ONLY = {"Shape", "Size"}


def network_flops(network: nn.Module, input_size: int) -> int:
    """The FLOPs of one image's forward through `network` at `input_size`."""
    from torch.utils.flop_counter import FlopCounterMode

    example = torch.zeros(1, 3, input_size, input_size, device=next(network.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(example)
    return counter.get_total_flops()


def onnx_flops(path: str, input_size: int, batches: tuple[int, ...] = (1,)) -> list[int]:
    """The FLOPs of one forward through the ONNX model at `path` of each of `batches` images (its
    input `batch` x 3 x `input_size` x `input_size`, zeros), from the shapes of every value on
    that run: the graph runs, unoptimized, with each value's shape as an extra output, so shapes
    computed in the graph (padding sizes) are known. A convolution or matrix product (Conv,
    ConvTranspose, Gemm, MatMul, Einsum) counts twice its multiply-adds, a pooling window or LRN
    its window's values for each value out, and any other node but Shape and Size one for each
    value it reads or writes, whichever is more."""
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import helper

    model = onnx.load(path)
    graph = model.graph
    nodes = list(graph.node)
    values = list(dict.fromkeys(name for node in nodes for name in (*node.input, *node.output) if name))
    named = {*values, *(tensor.name for tensor in graph.initializer), *(value.name for value in graph.input),
             *(value.name for value in graph.output)}
    prefix = "gazer.shape."
    while any(name.startswith(prefix) for name in named):  # a graph's own names are any strings
        prefix += "_"
    taps = dict(zip(values, (f"{prefix}{index}" for index in range(len(values)))))
    made = {output for node in nodes for output in node.output}
    # each value's Shape right after the node that makes it, run in that order (priority-based:
    # ONNX Runtime's default order held every value of the run at once, 700 MB instead of 120 for
    # 24 layers of 12 MB)
    tapped_nodes = [helper.make_node("Shape", [name], [taps[name]]) for name in values if name not in made]
    for node in nodes:
        tapped_nodes += [node, *(helper.make_node("Shape", [name], [taps[name]]) for name in node.output if name)]
    graph.ClearField("node")
    graph.node.extend(tapped_nodes)
    graph.output.extend(helper.make_tensor_value_info(tap, onnx.TensorProto.INT64, [None]) for tap in taps.values())
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    flush_denormals_in(options)
    # the weights in a file of their own: serialized with the graph, they took a buffer of the
    # file's size, past what the check's capped address space had left for a VGG-16
    tapped, weights = Path(path).with_name("tapped.onnx"), Path(path).with_name("tapped.weights")
    try:
        onnx.save_model(model, str(tapped), save_as_external_data=True, location=weights.name)
        del model, graph
        session = onnxruntime.InferenceSession(str(tapped), options, providers=["CPUExecutionProvider"])
    finally:
        tapped.unlink(missing_ok=True)
        weights.unlink(missing_ok=True)
    attributes = [{attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
                  for node in nodes]
    counts = []
    for batch in batches:
        image = np.zeros((batch, 3, input_size, input_size), np.float32)
        ran = session.run(list(taps.values()), {session.get_inputs()[0].name: image})
        shapes = dict(zip(values, (shape.tolist() for shape in ran)))
        counts.append(sum(_node_flops(node.op_type, given, [shapes[name] for name in node.input if name],
                                      [shapes[name] for name in node.output if name])
                          for node, given in zip(nodes, attributes)))
    return counts


def _node_flops(op: str, attributes: dict[str, Any], inputs: list[list[int]], outputs: list[list[int]]) -> int:
    out = outputs[0] if outputs else []
    if op == "Conv":  # each output value: in-channels / groups x kernel multiply-adds
        return 2 * math.prod(out) * math.prod(inputs[1][1:])
    if op == "ConvTranspose":  # each input value: out-channels / groups x kernel
        return 2 * math.prod(inputs[0]) * math.prod(inputs[1][1:])
    if op == "MatMul":
        return 2 * math.prod(out) * inputs[0][-1]
    if op == "Gemm":  # A is M x K, or K x M
        return 2 * math.prod(out) * (math.prod(inputs[0]) // out[0]) if out[0] else 0
    if op == "Einsum":
        return 2 * math.prod(out) * _summed_size(attributes["equation"].decode(), inputs)
    if op in ("MaxPool", "AveragePool"):
        return math.prod(out) * math.prod(attributes["kernel_shape"])
    if op == "LRN":
        return math.prod(out) * attributes["size"]
    if op in _SHAPE_ONLY:
        return 0
    return max(sum(math.prod(shape) for shape in inputs), sum(math.prod(shape) for shape in outputs))


def _summed_size(equation: str, inputs: list[list[int]]) -> int:
    """The product of the sizes of the indices an Einsum sums over (those not in its output)."""
    terms, _, result = equation.replace(" ", "").partition("->")
    sizes: dict[str, int] = {}
    for term, shape in zip(terms.split(","), inputs):
        before, _, after = term.partition("...")
        for letter, size in [*zip(before, shape), *zip(after[::-1], shape[::-1])]:
            sizes[letter] = max(sizes.get(letter, 1), size)
    letters = terms.replace(",", "").replace(".", "")
    kept = set(result) if "->" in equation else {letter for letter in letters if letters.count(letter) == 1}
    return math.prod(size for letter, size in sizes.items() if letter not in kept)


def relative_cost(flops: int | None, time_ratio: float | None = None) -> float:
    """A forward pass of `flops` in forward passes of the reference, or `time_ratio` (an uploaded
    graph's time over the reference's) where that is more, at least 1 (and 1 where unknown): a
    smaller model's explanations cost what Lite0's do."""
    return max(1.0, (flops or 0) / REFERENCE_FLOPS, time_ratio or 0.0)
