"""What one image's forward pass costs: twice the multiply-adds of its convolutions and matrix
products, which are nearly all of a CNN's, counted by torch on a forward of the network
(network_flops), or on a profiled run of an uploaded ONNX graph (onnx_flops). The explain
budget counts forward passes of EfficientNet-Lite0 at 224 (REFERENCE_FLOPS); a forward of a
larger model counts as many of those as it costs (relative_cost)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

# EfficientNet-Lite0 at 224, as network_flops counts it (tests/unit/test_flops.py).
REFERENCE_FLOPS = 770_375_104
# ONNX Runtime's profile takes about 600 bytes a node run (150 KB for EfficientNet-Lite0's 250
# nodes): this bounds the run onnx_flops reads at about 50,000 node runs.
MAX_PROFILE_BYTES = 32 * 2**20


def network_flops(network: nn.Module, input_size: int) -> int:
    """The FLOPs of one image's forward through `network` at `input_size`."""
    from torch.utils.flop_counter import FlopCounterMode

    example = torch.zeros(1, 3, input_size, input_size, device=next(network.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(example)
    return counter.get_total_flops()


def onnx_flops(path: str, input_size: int) -> int | None:
    """The FLOPs of one image's forward through the ONNX model at `path` (1 x 3 x `input_size`
    x `input_size`, zeros), from the shapes of the convolutions and matrix products ONNX Runtime
    ran, unoptimized (the graph's own nodes) and with its profiler on: shapes computed in the
    graph are known, and a node in a loop counts each time it ran. None where the profile passes
    MAX_PROFILE_BYTES."""
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(path).with_name("flops"))
    options.add_session_config_entry("session.disable_prepacking", "1")  # a packed weight leaves the profile
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, input_size, input_size), np.float32)})
    profile = Path(session.end_profiling())
    try:
        if profile.stat().st_size > MAX_PROFILE_BYTES:
            return None
        events = json.loads(profile.read_text())
    finally:
        profile.unlink()
    total = 0
    for event in events:
        arguments = event.get("args", {})
        if event.get("cat") == "Node" and arguments.get("op_name") in _COUNTED:
            inputs, outputs = ([next(iter(shape.values())) for shape in arguments[key]]
                               for key in ("input_type_shape", "output_type_shape"))
            if len(inputs) < 2 or not outputs:
                raise ValueError(f"ONNX Runtime's profile gives no shapes for {event.get('name')!r}")
            total += _node_flops(arguments["op_name"], inputs[0], inputs[1], outputs[0])
    return total


_COUNTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _node_flops(op: str, first: list[int], second: list[int], out: list[int]) -> int:
    if op == "Conv":  # each output value: in-channels / groups x kernel multiply-adds
        return 2 * math.prod(out) * math.prod(second[1:])
    if op == "ConvTranspose":  # each input value: out-channels / groups x kernel
        return 2 * math.prod(first) * math.prod(second[1:])
    if op == "MatMul":
        return 2 * math.prod(out) * first[-1]
    return 2 * math.prod(out) * (math.prod(first) // out[0]) if out[0] else 0  # Gemm: A is M x K, or K x M


def relative_cost(flops: int | None) -> float:
    """A forward pass of `flops` in forward passes of the reference, at least 1 (and 1 where
    unknown): a smaller model's explanations cost what Lite0's do."""
    return max(1.0, (flops or 0) / REFERENCE_FLOPS)
