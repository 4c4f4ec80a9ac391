"""What one image's forward pass costs: twice the multiply-adds of its convolutions and matrix
products, which are nearly all of a CNN's, counted by torch on a forward of the network
(network_flops), or from an uploaded ONNX graph's inferred shapes (onnx_flops). The explain
budget counts forward passes of EfficientNet-Lite0 at 224 (REFERENCE_FLOPS); a forward of a
larger model counts as many of those as it costs (relative_cost)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# EfficientNet-Lite0 at 224, as network_flops counts it (tests/unit/test_flops.py).
REFERENCE_FLOPS = 770_375_104
# Initializers of at most this many values keep their data for shape inference (a Reshape's
# target shape); larger ones, weights, are read by their shape alone.
_VALUES_KEPT = 64


def network_flops(network: nn.Module, input_size: int) -> int:
    """The FLOPs of one image's forward through `network` at `input_size`."""
    from torch.utils.flop_counter import FlopCounterMode

    example = torch.zeros(1, 3, input_size, input_size, device=next(network.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(example)
    return counter.get_total_flops()


def onnx_flops(path: Path, input_size: int) -> int | None:
    """The FLOPs of one image's forward through the ONNX model at `path`, its input
    1 x 3 x `input_size` x `input_size`; None where shape inference leaves the shape a
    convolution or matrix product needs unknown."""
    import onnx
    from onnx import helper, shape_inference

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initialized = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    weights = [tensor for tensor in graph.initializer if math.prod(tensor.dims) > _VALUES_KEPT]
    for tensor in weights:
        graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        graph.initializer.remove(tensor)
    image = next(value for value in graph.input if value.name not in initialized)
    for dimension, size in zip(image.type.tensor_type.shape.dim, (1, 3, input_size, input_size)):
        dimension.Clear()
        dimension.dim_value = size
    inferred = shape_inference.infer_shapes(model, data_prop=True).graph  # data_prop: shapes computed in the graph
    shapes = dict(initialized)
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        dims = value.type.tensor_type.shape.dim
        if all(dimension.HasField("dim_value") for dimension in dims):
            shapes[value.name] = [dimension.dim_value for dimension in dims]
    total = 0
    for node in inferred.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        first, second, out = (shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0]))
        if first is None or second is None or out is None:
            log.warning("%s: no shape for %s node %r: its FLOPs are not counted", path.name, node.op_type, node.name)
            return None
        if node.op_type == "Conv":  # each output value: in-channels / groups x kernel multiply-adds
            total += 2 * math.prod(out) * math.prod(second[1:])
        elif node.op_type == "ConvTranspose":  # each input value: out-channels / groups x kernel
            total += 2 * math.prod(first) * math.prod(second[1:])
        else:
            transposed = node.op_type == "Gemm" and any(attribute.name == "transA" and attribute.i
                                                        for attribute in node.attribute)
            total += 2 * math.prod(out) * (first[-2] if transposed else first[-1])
    return total


def relative_cost(flops: int | None) -> float:
    """A forward pass of `flops` in forward passes of the reference, at least 1 (and 1 where
    unknown): a smaller model's explanations cost what Lite0's do."""
    return max(1.0, (flops or 0) / REFERENCE_FLOPS)
