"""core.models.flops: a forward's FLOPs, counted by torch and from an ONNX graph."""

from __future__ import annotations

import pytest
import torch
import torchvision

from core.models.architectures import build_network
from core.models.flops import REFERENCE_FLOPS, network_flops, onnx_flops, relative_cost


def test_the_reference_is_lite0_at_224_as_counted():
    assert network_flops(build_network("efficientnet_lite0", 1000, 224).eval(), 224) == REFERENCE_FLOPS


@pytest.mark.parametrize("architecture, size", [("resnet18", 96), ("mobilenet_v3_small", 128), ("efficientnet_b0", 96)])
def test_an_onnx_graph_counts_what_its_network_does(tmp_path, architecture, size):
    network = torchvision.models.get_model(architecture, num_classes=10).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(network, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, input_names=["pixels"],
                      output_names=["logits"], dynamic_axes={"pixels": {0: "batch"}})
    counted = onnx_flops(path, size)
    assert counted == pytest.approx(network_flops(network, size), rel=0.01), (counted, network_flops(network, size))


def test_a_graph_whose_shapes_are_unknown_counts_as_the_reference(tmp_path):
    """Our own export's padding sizes are computed in the graph, past what shape inference follows."""
    path = tmp_path / "lite0.onnx"
    network = build_network("efficientnet_lite0", 10, 224).eval()
    torch.onnx.export(network, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False)
    assert onnx_flops(path, 224) is None and relative_cost(None) == 1.0


def test_a_smaller_model_costs_what_the_reference_does():
    assert relative_cost(REFERENCE_FLOPS // 10) == 1.0 and relative_cost(REFERENCE_FLOPS * 3) == 3.0
