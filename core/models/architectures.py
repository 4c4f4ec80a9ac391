"""Networks by architecture name, all with the same surface, which CAM, fine-tuning, attention
and ONNX export rely on (and nothing else about an architecture):

`network.anatomy` (core.models.anatomy): the CAM layer, the classifier, the head, the blocks
and stages. Built in: EfficientNet-Lite0/1/2 (`EfficientNetLite`); every torchvision
classification builder and every timm model (`timm:NAME`) through `core.models.adapted.adapt`.
"""

from __future__ import annotations

import torch
from torch import nn

from core.attention import choose_points, make_attention
from core.models.adapted import adapt
from core.models.anatomy import Anatomy, stages_by_resolution
from core.names import EFFICIENTNET_LITE_SIZES


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite re-wrapped from `efficientnet_lite_pytorch` with plain layer names:
    `stem`, `blocks.0` .. `blocks.N`, `head` (last feature map), `classifier`."""

    def __init__(self, architecture: str, num_classes: int, input_size: int, head_hidden: int = 0,
                 dropout: float | None = None, attention: str = "none", attention_stages: int = 1, *,
                 attention_gate: str = "residual", attention_stride: int | None = None) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        variant = architecture.replace("efficientnet_", "efficientnet-")
        net = EfficientNet.from_name(variant, num_classes=num_classes, image_size=input_size)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(net._blocks)
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self.dropout = nn.Dropout(net._global_params.dropout_rate if dropout is None else dropout)
        features = net._fc.in_features
        # An optional hidden layer before `classifier`; CAM needs it absent (a linear head).
        self.hidden = (nn.Sequential(nn.Linear(features, head_hidden), nn.ReLU(), nn.Dropout(self.dropout.p))
                       if head_hidden else nn.Identity())
        self.classifier = nn.Linear(head_hidden or features, num_classes)
        self.drop_connect_rate = net._global_params.drop_connect_rate
        self.attention = nn.ModuleDict({
            point: make_attention(attention, channels, gate=attention_gate)
            for point, channels in choose_points(self.attention_points(), attention_stages, attention_stride)
        } if attention != "none" else {})

    def block_stages(self) -> list[list[int]]:
        """Block indices grouped into stages (runs of blocks with the same output channels), top
        (nearest the classifier) first, each stage's last block first."""
        stages: list[list[int]] = []
        for index in reversed(range(len(self.blocks))):
            channels = self.blocks[index]._block_args.output_filters
            if not stages or self.blocks[stages[-1][-1]]._block_args.output_filters != channels:
                stages.append([])
            stages[-1].append(index)
        return stages

    def _strides(self) -> list[int]:
        """The stem's output stride, then each block's."""
        strides = [self.stem[0].stride[0]]
        for block in self.blocks:
            strides.append(strides[-1] * block._depthwise_conv.stride[0])
        return strides

    def resolution_stages(self) -> list[tuple[str, ...]]:
        """Stem, blocks and head grouped by the resolution of their output, top first, each stage's
        last block first: what gradual unfreezing adds an epoch at a time (adapted models' stages)."""
        strides = self._strides()
        blocks = [(f"blocks.{index}", strides[index + 1]) for index in range(len(self.blocks))]
        return stages_by_resolution([("stem", strides[0]), *blocks, ("head", strides[-1])])

    def attention_points(self) -> list[tuple[str, int, int]]:
        """Where attention can go, top first: after the head, then after each block stage; with
        each point's channels and stride."""
        strides = self._strides()
        return [("after_head", self.head[0].out_channels, strides[-1])] + [
            (f"after_block_{stage[0]}", self.blocks[stage[0]]._block_args.output_filters, strides[stage[0] + 1])
            for stage in self.block_stages()]

    @property
    def cam_layer(self) -> str:
        """The feature map that global pooling and the classifier see."""
        return "attention.after_head" if "after_head" in self.attention else "head"

    @property
    def anatomy(self) -> Anatomy:
        return Anatomy(
            cam_layer=self.cam_layer, classifier_layer="classifier",
            head_layers=("dropout", "hidden", "classifier", "attention"),  # dropout: in train mode while fine-tuning
            blocks=("stem", *(f"blocks.{index}" for index in range(len(self.blocks))), "head"),
            stages=tuple(self.resolution_stages()))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * index / len(self.blocks))
            if f"after_block_{index}" in self.attention:
                x = self.attention[f"after_block_{index}"](x)
        x = self.head(x)
        return self.attention["after_head"](x) if "after_head" in self.attention else x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(self.dropout(features.mean(dim=(2, 3)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def load_upstream_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict saved by `efficientnet_lite_pytorch` (its key names)."""
        renames = {
            "_conv_stem.": "stem.0.",
            "_bn0.": "stem.1.",
            "_blocks.": "blocks.",
            "_conv_head.": "head.0.",
            "_bn1.": "head.1.",
            "_fc.": "classifier.",
        }
        renamed = {}
        for key, value in state.items():
            for old, new in renames.items():
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            renamed[key] = value
        self.load_state_dict(renamed, strict=True)


def build_network(architecture: str, num_classes: int, input_size: int, head_hidden: int = 0,
                  dropout: float | None = None, attention: str = "none", attention_stages: int = 1, *,
                  attention_gate: str = "residual", attention_stride: int | None = None) -> nn.Module:
    """`attention_gate`: core.attention.GATE_FORMS; `attention_stride`: see core.attention.choose_points."""
    if architecture in EFFICIENTNET_LITE_SIZES:
        return EfficientNetLite(architecture, num_classes, input_size, head_hidden, dropout, attention,
                                attention_stages, attention_gate=attention_gate, attention_stride=attention_stride)
    return adapt(architecture, num_classes, input_size, head_hidden, dropout, attention, attention_stages,
                 attention_gate=attention_gate, attention_stride=attention_stride)
