"""core.models.flops: a forward's FLOPs, counted by torch and from the shapes on an ONNX graph's run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper

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
    """Within 5% (MobileNet-V3-small's activations and squeezes: 3%): the graph's other nodes
    count a value each, which torch's count leaves out."""
    network = torchvision.models.get_model(architecture, num_classes=10).eval()
    counted = onnx_flops(export(network, size, tmp_path / "model.onnx"), size, (1, 2))
    torch_count = network_flops(network, size)
    assert torch_count <= counted[0] == pytest.approx(torch_count, rel=0.05), (counted, torch_count)
    assert counted[1] == pytest.approx(2 * counted[0], rel=1e-4)
    assert [path.name for path in tmp_path.iterdir()] == ["model.onnx"]


def test_padding_sizes_computed_in_the_graph_are_known_on_a_run(tmp_path):
    """Lite's static padding: shape inference could not follow it, so the graph counted as 1."""
    network = build_network("efficientnet_lite0", 10, 320).eval()
    counted = onnx_flops(export(network, 320, tmp_path / "lite0.onnx"), 320)[0]
    assert counted == pytest.approx(network_flops(network, 320), rel=0.02)


def graph(path, nodes: list, constants: dict, size: int) -> str:
    made = helper.make_graph(
        nodes, "graph", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()])
    model = helper.make_model(made, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


HEAD = {"head": np.ones((10, 64), np.float32)}
POOLED_HEAD = [helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
               helper.make_node("Flatten", ["pooled"], ["flat"]),
               helper.make_node("Gemm", ["flat", "head"], ["y"], transB=1)]


def test_an_einsum_counts_as_the_convolution_it_computes(tmp_path):
    """A 1x1 convolution written as an Einsum counted as the values it wrote, 1/3 of its work per value."""
    weights = {"w": np.ones((64, 3, 1, 1), np.float32), "w2": np.ones((64, 3), np.float32), **HEAD}
    convolution = graph(tmp_path / "conv.onnx", [helper.make_node("Conv", ["x", "w"], ["features"]), *POOLED_HEAD],
                        weights, 32)
    einsum = graph(tmp_path / "einsum.onnx", [helper.make_node("Einsum", ["x", "w2"], ["features"],
                                                               equation="bchw,oc->bohw"), *POOLED_HEAD], weights, 32)
    assert onnx_flops(einsum, 32) == onnx_flops(convolution, 32)
    assert onnx_flops(convolution, 32)[0] > 2 * 32 * 32 * 64 * 3


def test_a_graph_whose_names_are_the_taps_own_counts_the_same(tmp_path):
    """A value or an unused initializer named as a tap was a duplicate name: the count failed."""
    weights = {"w": np.ones((64, 3, 1, 1), np.float32), **HEAD}
    plain = graph(tmp_path / "plain.onnx", [helper.make_node("Conv", ["x", "w"], ["features"]), *POOLED_HEAD],
                  weights, 32)
    named = graph(tmp_path / "named.onnx", [helper.make_node("Conv", ["x", "w"], ["gazer.shape.0"]),
                                            helper.make_node("Identity", ["gazer.shape.0"], ["features"]),
                                            *POOLED_HEAD], {**weights, "gazer.shape.1": np.ones(1, np.float32)}, 32)
    identity = 64 * 32 * 32
    assert onnx_flops(named, 32, (1, 2)) == [count + batch * identity
                                             for count, batch in zip(onnx_flops(plain, 32, (1, 2)), (1, 2))]


def test_a_pooling_window_counts_its_values(tmp_path):
    weights = {"w": np.ones((64, 3, 1, 1), np.float32), **HEAD}
    pooled = graph(tmp_path / "pool.onnx", [helper.make_node("Conv", ["x", "w"], ["c"]),
                                            helper.make_node("MaxPool", ["c"], ["features"], kernel_shape=[15, 15],
                                                             pads=[7] * 4), *POOLED_HEAD], weights, 32)
    assert onnx_flops(pooled, 32)[0] >= 64 * 32 * 32 * 15 * 15


def test_a_kernel_tiled_by_the_batch_size_counts_more_per_image_in_a_larger_batch(tmp_path):
    """Tile's repeats may come from the input's shape: its cost per image grows with the batch
    (onnx_probe refuses it)."""
    constants = {"w": np.ones((64, 3, 1, 1), np.float32), "ones": np.array([1, 1], np.int64),
                 "start": np.array([0], np.int64), "end": np.array([1], np.int64), **HEAD}
    tiled = graph(tmp_path / "tiled.onnx", [
        helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Slice", ["shape", "start", "end"], ["batch"]),
        helper.make_node("Concat", ["ones", "batch", "batch"], ["repeats"], axis=0),
        helper.make_node("Tile", ["w", "repeats"], ["kernel"]),
        helper.make_node("Conv", ["x", "kernel"], ["features"], auto_pad="SAME_UPPER"), *POOLED_HEAD], constants, 32)
    one, two = onnx_flops(tiled, 32, (1, 2))
    assert two / 2 > 3 * one


def test_a_smaller_model_costs_what_the_reference_does():
    assert relative_cost(REFERENCE_FLOPS // 10) == 1.0 and relative_cost(REFERENCE_FLOPS * 3) == 3.0
    assert relative_cost(None) == 1.0
