"""core.models.flops: a forward's FLOPs, counted by torch and on ONNX Runtime's profiled run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper

from core.models import flops
from core.models.architectures import build_network
from core.models.flops import REFERENCE_FLOPS, network_flops, onnx_flops, relative_cost


def export(network: torch.nn.Module, size: int, path) -> str:
    torch.onnx.export(network, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, input_names=["pixels"],
                      output_names=["logits"], dynamic_axes={"pixels": {0: "batch"}})
    return str(path)


def test_the_reference_is_lite0_at_224_as_counted():
    assert network_flops(build_network("efficientnet_lite0", 1000, 224).eval(), 224) == REFERENCE_FLOPS


@pytest.mark.parametrize("architecture, size", [("resnet18", 96), ("mobilenet_v3_small", 128), ("efficientnet_b0", 96),
                                                ("convnext_tiny", 64)])
def test_an_onnx_graph_counts_what_its_network_does(tmp_path, architecture, size):
    """ConvNeXt's linear layers are MatMuls on weights that ONNX Runtime packs, which its profile
    then leaves out: the count's session packs nothing."""
    network = torchvision.models.get_model(architecture, num_classes=10).eval()
    counted = onnx_flops(export(network, size, tmp_path / "model.onnx"), size)
    assert counted == pytest.approx(network_flops(network, size), rel=0.01), (counted, network_flops(network, size))
    assert [path.name for path in tmp_path.iterdir()] == ["model.onnx"]  # the profile is gone


def test_padding_sizes_computed_in_the_graph_are_known_on_a_run(tmp_path):
    """Lite's static padding: shape inference could not follow it, so the graph counted as 1."""
    network = build_network("efficientnet_lite0", 10, 320).eval()
    assert onnx_flops(export(network, 320, tmp_path / "lite0.onnx"), 320) == network_flops(network, 320)


def looped_convolution(path, times: int) -> str:
    """A 3 x 3 convolution run `times` times by a Loop, then global pooling and a 3 -> 10 Gemm."""
    body = helper.make_graph(
        [helper.make_node("Conv", ["x_in", "w"], ["x_out"], pads=[1, 1, 1, 1]),
         helper.make_node("Identity", ["go_in"], ["go_out"])], "body",
        [helper.make_tensor_value_info("step", TensorProto.INT64, []),
         helper.make_tensor_value_info("go_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("go_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", TensorProto.FLOAT, None)])
    constants = [numpy_helper.from_array(np.ones((3, 3, 3, 3), np.float32) / 27, "w"),
                 numpy_helper.from_array(np.array(times, np.int64), "times"),
                 numpy_helper.from_array(np.array(True), "go"),
                 numpy_helper.from_array(np.ones((10, 3), np.float32), "head")]
    graph = helper.make_graph(
        [helper.make_node("Loop", ["times", "go", "pixels"], ["features"], body=body),
         helper.make_node("ReduceMean", ["features"], ["pooled"], axes=[2, 3], keepdims=0),
         helper.make_node("Gemm", ["pooled", "head"], ["logits"], transB=1)], "looped",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_a_node_in_a_loop_counts_each_time_it_ran(tmp_path):
    convolution, head = 2 * 32 * 32 * 3 * 27, 2 * 10 * 3
    assert onnx_flops(looped_convolution(tmp_path / "once.onnx", 1), 32) == convolution + head
    assert onnx_flops(looped_convolution(tmp_path / "often.onnx", 50), 32) == 50 * convolution + head


def test_a_run_too_long_to_count_is_none(tmp_path, monkeypatch):
    path = looped_convolution(tmp_path / "often.onnx", 200)
    assert onnx_flops(path, 32) is not None
    monkeypatch.setattr(flops, "MAX_PROFILE_BYTES", 50_000)  # ONNX Runtime's profile of 400 node runs passes it
    assert onnx_flops(path, 32) is None


def test_a_smaller_model_costs_what_the_reference_does():
    assert relative_cost(REFERENCE_FLOPS // 10) == 1.0 and relative_cost(REFERENCE_FLOPS * 3) == 3.0
    assert relative_cost(None) == 1.0
