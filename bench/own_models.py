"""Uploaded architectures at batch 1 on CPU: ONNX Runtime against eager torch, Grad-CAM against
a torch forward, pytorch-grad-cam's GradCAM against Gazer's.

  python -m bench.own_models

resnet18, mobilenet_v3_large and vgg11_bn with random weights (no hub is reachable), registered
as an upload would be, at 224 on chelsea; the default CAM layer of each.
"""

from __future__ import annotations


import torch
import torchvision
from safetensors.torch import save

from bench.common import interleaved, report, run_timed, scratch_dir
from core import imaging
from core.explain import METHODS
from core.models import upload
from core.models.registry import ModelRegistry
from core.storage import Storage
from support import chelsea

ARCHITECTURES = ("resnet18", "mobilenet_v3_large", "vgg11_bn")


def main() -> None:
    from pytorch_grad_cam import GradCAM as ReferenceGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    registry = ModelRegistry(Storage(scratch_dir()), max_loaded=len(ARCHITECTURES))
    for architecture in ARCHITECTURES:
        torch.manual_seed(0)
        weights = torchvision.models.get_model(architecture, weights=None).state_dict()
        spec, network = upload.torch_model(architecture.replace("_", "-"), architecture,
                                           save({key: value.contiguous() for key, value in weights.items()}),
                                           None, upload.Preprocessing())
        model = registry.get(registry.register_network(spec, network).ref)
        network, spec = model.network, model.spec
        batch = imaging.preprocess([chelsea()], spec)[0]
        inputs = torch.from_numpy(batch)
        target = torch.tensor([1])
        reference = ReferenceGradCAM(model=network, target_layers=[network.get_submodule(spec.cam_layer)])

        def forward() -> None:
            with torch.no_grad():
                network(inputs)

        times = interleaved({
            "onnx": lambda: model.predictor.logits(batch),
            "forward": forward,
            "gradcam": lambda: METHODS["gradcam"](network, inputs, target, spec.cam_layer),
            "pytorch_grad_cam": lambda: reference(input_tensor=inputs, targets=[ClassifierOutputTarget(1)]),
        }, rounds=5, per_round=5)
        report(f"{architecture} at 224, batch 1, CAM layer {spec.cam_layer} (median ms)", [
            ("ONNX Runtime predict", f"{times['onnx']:.2f}"),
            ("torch forward (no_grad)", f"{times['forward']:.2f}"),
            ("gazer gradcam", f"{times['gradcam']:.2f}"),
            ("pytorch-grad-cam GradCAM", f"{times['pytorch_grad_cam']:.2f}"),
            ("torch forward / ONNX Runtime", f"{times.ratio('forward', 'onnx'):.2f}x"),
            ("gradcam / forward", f"{times.ratio('gradcam', 'forward'):.2f}x  (goal <= 1.3x)"),
            ("pytorch-grad-cam / gazer", f"{times.ratio('pytorch_grad_cam', 'gradcam'):.2f}x  (goal >= 2.5x)"),
        ])


if __name__ == "__main__":
    run_timed(main)
