"""Gradient methods and a training step on the CPU with the network and inputs in channels_last
(core.runtime.devices.fast_layout) against the default contiguous layout, side by side.

  python -m bench.channels_last                          # four architectures, a few minutes
  python -m bench.channels_last --architectures resnet18

Networks at 224 with seeded random weights (only the arithmetic's speed is measured here).
"""

from __future__ import annotations

import argparse
import copy
from typing import Callable

import torch
from torch import nn

from bench.common import interleaved, report, run_timed
from core.explain import METHODS
from core.models.architectures import build_network
from core.runtime.devices import fast_layout

ARCHITECTURES = ("efficientnet_lite0", "resnet18", "mobilenet_v3_large", "convnext_tiny")
TARGET = 281


def explanation(method: str, batch: int, **options: object) -> Callable[[nn.Module, torch.Tensor], object]:
    targets = torch.full((batch,), TARGET)

    def run(network: nn.Module, inputs: torch.Tensor) -> object:
        return METHODS[method](network, inputs, targets, network.anatomy.cam_layer, **options)
    return run


def training_step(network: nn.Module, inputs: torch.Tensor) -> None:
    labels = torch.arange(len(inputs)) % 10
    loss = nn.functional.cross_entropy(network(inputs), labels)
    network.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter -= 1e-4 * parameter.grad


def compare(architecture: str) -> None:
    torch.manual_seed(0)
    frozen = build_network(architecture, 1000, 224).eval().requires_grad_(False)
    trained = build_network(architecture, 10, 224).train()
    cases = [
        ("gradcam, batch 1", frozen, 1, explanation("gradcam", 1)),
        ("gradcam, batch 8", frozen, 8, explanation("gradcam", 8)),
        ("saliency, batch 1", frozen, 1, explanation("saliency", 1)),
        ("integrated gradients, 16 steps", frozen, 1, explanation("integrated_gradients", 1, steps=16)),
        ("smoothgrad, 8 samples", frozen, 1, explanation("smoothgrad", 1, samples=8)),
        ("training step, batch 16", trained, 16, training_step),
    ]
    rows = []
    for name, network, batch, work in cases:
        inputs = torch.randn(batch, 3, 224, 224)
        fast_network, fast_inputs = fast_layout(copy.deepcopy(network)), fast_layout(inputs)
        times = interleaved({"contiguous": lambda: work(network, inputs),
                             "channels_last": lambda: work(fast_network, fast_inputs)},
                            rounds=3, per_round=3, warmup=1)
        rows.append((name, f"{times['contiguous']:8.1f} ms  {times['channels_last']:8.1f} ms  "
                           f"{times.ratio('contiguous', 'channels_last'):.2f}x"))
    report(f"{architecture} on the CPU: contiguous, channels_last, speed-up", rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES))
    arguments = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for architecture in arguments.architectures:
        compare(architecture)


if __name__ == "__main__":
    run_timed(main)
