"""Uploaded architectures read from the network itself: classifier, CAM layer, blocks and
stages, attention placed by hooks, frozen BatchNorm statistics, ONNX export that agrees."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from core.attention import spatial_gates
from core.models.architectures import build_network
from core.models.onnx_export import export_onnx, max_logit_difference
from core.runtime.onnx_predictor import OnnxPredictor
from core.training.config import FineTuneConfig
from core.training.finetune import head_modules, set_trainable, trainable_backbone, transfer_backbone


@pytest.mark.parametrize("architecture, size, cam_layer, classifier, top_stage", [
    ("resnet18", 64, "layer4", "fc", ("layer4.1", "layer4.0")),
    ("inception_v3", 160, "Mixed_7c", "fc", ("Mixed_7c", "Mixed_7b", "Mixed_7a")),
    ("mobilenet_v2", 64, "features", "classifier.1", ("features.18", "features.17", "features.16", "features.15",
                                                      "features.14")),
    ("timm:tf_efficientnet_lite0", 64, "bn2", "classifier", ("bn2", "conv_head", "blocks.6", "blocks.5")),
    # Lite's own: stages of one resolution, as gradual_unfreeze promises (they were runs of equal channels: 9)
    ("efficientnet_lite0", 224, "head", "classifier",
     ("head", "blocks.15", "blocks.14", "blocks.13", "blocks.12", "blocks.11")),
])
def test_the_anatomy_is_read_from_the_network(architecture, size, cam_layer, classifier, top_stage):
    network = build_network(architecture, 5, size)
    anatomy = network.anatomy
    assert (anatomy.cam_layer, anatomy.classifier_layer) == (cam_layer, classifier)
    assert anatomy.stages[0] == top_stage
    assert [block for stage in reversed(anatomy.stages) for block in reversed(stage)] == list(anatomy.blocks)
    assert network.get_submodule(classifier).out_features == 5


def test_fine_tuning_heads_and_attention_keep_the_original_names(tmp_path):
    base = build_network("resnet18", 7, 64).eval()
    tuned = build_network("resnet18", 3, 64, head_hidden=16, dropout=0.1, attention="cbam", attention_stages=2,
                          attention_gate="sigmoid").eval()
    transfer_backbone(base, tuned)
    assert tuned.anatomy.classifier_layer == "fc.linear" and list(tuned.attention) == ["after_layer4_1", "after_layer3_1"]
    assert spatial_gates(tuned) == ["attention.after_layer4_1.spatial.gate", "attention.after_layer3_1.spatial.gate"]
    assert torch.equal(tuned.layer2[0].conv1.weight, base.layer2[0].conv1.weight)
    inputs = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = base.layer4(base.layer3(base.layer2(base.layer1(base.maxpool(base.relu(base.bn1(base.conv1(inputs))))))))
        attended = []
        handle = tuned.layer4.register_forward_hook(lambda module, args, output: attended.append(output))
        tuned(inputs)
        handle.remove()
    assert attended[0].shape == plain.shape and not torch.allclose(attended[0], plain)  # the gates act
    residual = build_network("resnet18", 3, 64, attention="cbam", attention_stages=2).eval()
    transfer_backbone(base, residual)
    with torch.no_grad():  # residual gates start as the identity
        handle = residual.layer4.register_forward_hook(lambda module, args, output: attended.append(output))
        residual(inputs)
        handle.remove()
    assert torch.allclose(attended[1], plain, rtol=0, atol=1e-6)
    export_onnx(tuned, 64, tmp_path / "tuned.onnx")
    assert max_logit_difference(tuned, OnnxPredictor(tmp_path / "tuned.onnx"), 64)[0] < 1e-4


def test_exports_at_once_in_threads_all_succeed_and_leave_the_warning_filters_as_they_were(tmp_path):
    """Two models' first loads at once, or an upload meanwhile: torch's exporter keeps its state in
    globals (one of them failed: "GLOBALS.in_onnx_export must be True"), and catch_warnings swaps
    the process's filters (every warning could stay ignored for good)."""
    networks = [build_network("resnet18", 3, 32).eval() for _ in range(4)]
    filters = list(warnings.filters)
    failures = []

    def export(index: int) -> None:
        try:
            for round_ in range(2):
                export_onnx(networks[index], 32, tmp_path / f"{index}-{round_}.onnx")
        except Exception as error:
            failures.append(repr(error))

    threads = [threading.Thread(target=export, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and warnings.filters == filters
    assert max_logit_difference(networks[3], OnnxPredictor(tmp_path / "3-1.onnx"), 32)[0] < 1e-4


def test_frozen_parts_keep_their_batchnorm_statistics():
    network = build_network("resnet18", 3, 64, dropout=0.1)
    config = FineTuneConfig(dataset_id="x", output_model="y", strategy="fine_tune", unfreeze_blocks=2)
    set_trainable(network, head_modules(network) + trainable_backbone(network, config, epoch=1))
    frozen, trained = network.layer1[0].bn1, network.layer4[1].bn2
    before = frozen.running_mean.clone(), trained.running_mean.clone()
    optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], lr=0.1)
    loss = network(torch.randn(4, 3, 64, 64) * 3 + 1).logsumexp(dim=1).mean()
    loss.backward()
    optimizer.step()
    assert torch.equal(frozen.running_mean, before[0]) and not frozen.weight.requires_grad
    assert not torch.equal(trained.running_mean, before[1]) and trained.weight.requires_grad
    assert network.layer1[0].conv1.weight.grad is None


@pytest.mark.parametrize("architecture, strategy", [("efficientnet_lite0", "feature_extraction"),
                                                    ("efficientnet_lite0", "fine_tune"),
                                                    ("resnet18", "feature_extraction")])
def test_the_heads_dropout_drops_while_training(architecture, strategy):
    """A sweep over head.dropout found the same loss for every value: Lite's dropout stayed in eval mode.
    Compared: what the classifier is given, in two training forwards of the same batch."""
    images = torch.randn(8, 3, 64, 64)
    given = {}
    for dropout in (0.0, 0.5):
        network = build_network(architecture, 3, 64, dropout=dropout)
        config = FineTuneConfig(dataset_id="x", output_model="y", strategy=strategy, unfreeze_blocks=2)
        set_trainable(network, head_modules(network) + trainable_backbone(network, config, epoch=1))
        inputs = []
        classifier = network.get_submodule(network.anatomy.classifier_layer)
        classifier.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
        for seed in (0, 1):
            torch.manual_seed(seed)
            network(images)
        assert inputs[0].abs().max() > 0
        given[dropout] = inputs
    assert torch.equal(*given[0.0])  # nothing else draws at random on the way
    assert not torch.equal(*given[0.5])


@pytest.mark.parametrize("architecture, size, neck", [
    ("mobilenet_v3_small", 64, ("classifier.0", "classifier.1", "classifier.2")),  # linear, hardswish, dropout
    ("timm:mobilenetv3_small_050", 64, ("conv_head", "norm_head", "act2", "flatten")),
    ("alexnet", 128, tuple(f"classifier.{index}" for index in range(6))),  # a dropout first
    ("mobilenet_v2", 64, ()),  # only a dropout before the classifier: head.dropout takes its place
])
def test_pretrained_layers_between_the_cam_layer_and_the_classifier_unfreeze_first(architecture, size, neck):
    """MobileNetV3's and VGG's first linear layers, and timm MobileNetV3's conv_head, trained in no
    strategy (every block unfrozen), and their dropout stayed in eval mode."""
    network = build_network(architecture, 3, size, dropout=0.2)
    blocks, cam_layer = network.anatomy.blocks, network.anatomy.cam_layer
    backbone, tail = blocks[:len(blocks) - len(neck)], blocks[len(blocks) - len(neck):]
    assert tail == neck and (backbone[-1] == cam_layer or backbone[-1].startswith(cam_layer + ".")), blocks
    if neck:
        assert network.anatomy.stages[0] == neck[::-1]
    for strategy, epoch in (("feature_extraction", 3), ("fine_tune", 1), ("gradual_unfreeze", 1)):
        layers = sum(1 for name in neck if any(True for _ in network.get_submodule(name).parameters()))
        config = FineTuneConfig(dataset_id="x", output_model="y", strategy=strategy, unfreeze_blocks=max(layers, 1))
        set_trainable(network, head_modules(network) + trainable_backbone(network, config, epoch))
        modules = [network.get_submodule(name) for name in neck]
        trains = strategy != "feature_extraction"
        assert all(module.training == trains for module in modules), (strategy, neck)
        assert all(parameter.requires_grad == trains for module in modules for parameter in module.parameters())


def test_every_torchvision_architecture_is_probed_on_the_meta_device_regnet_included():
    """An upload's weights are checked against the architecture's names and shapes before it is
    built. RegNet's builders read tensors back, which the meta device refused, so a 68-byte upload
    naming regnet_y_128gf built its 644 M parameters for real (2.6 GB, 6 s) before its 422."""
    from torchvision.models import regnet

    from core.models.adapted import construct_on_meta, torchvision_architectures

    original = regnet.BlockParams.__dict__["from_init_params"]
    for architecture in sorted(torchvision_architectures()):
        network = construct_on_meta(architecture)
        assert all(parameter.is_meta for parameter in network.parameters()), architecture
    assert regnet.BlockParams.__dict__["from_init_params"] is original
    assert sum(parameter.numel() for parameter in construct_on_meta("regnet_y_128gf").parameters()) > 6e8
