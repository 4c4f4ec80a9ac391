"""Explanation methods by name."""

from __future__ import annotations

from core.explain.attention_map import AttentionMap
from core.explain.cam import CAM
from core.explain.gradcam import GradCAM
from core.explain.gradcam_plus_plus import GradCAMPlusPlus
from core.explain.guided_backprop import GuidedBackprop
from core.explain.guided_gradcam import GuidedGradCAM
from core.explain.integrated_gradients import IntegratedGradients
from core.explain.layercam import LayerCAM
from core.explain.occlusion import Occlusion
from core.explain.rise import Rise
from core.explain.saliency import Saliency
from core.explain.scorecam import ScoreCAM
from core.explain.smoothgrad import SmoothGrad

METHODS = {
    "cam": CAM(),
    "gradcam": GradCAM(),
    "gradcam++": GradCAMPlusPlus(),
    "layercam": LayerCAM(),
    "scorecam": ScoreCAM(),
    "saliency": Saliency(),
    "guided_backprop": GuidedBackprop(),
    "guided_gradcam": GuidedGradCAM(),
    "integrated_gradients": IntegratedGradients(),
    "smoothgrad": SmoothGrad(),
    "attention": AttentionMap(),
    "occlusion": Occlusion(),
    "rise": Rise(),
}


def supported_methods(linear_head: bool, spatial_attention: bool, gradients: bool = True,
                      guided: bool = False) -> list[str]:
    """The methods a model with this head and these attention modules can answer; without
    `gradients` (a model served from ONNX alone), the model-agnostic ones only; the guided ones
    where `guided` (its network's activations are ReLUs: guided_backprop.guides)."""
    return sorted(name for name, method in METHODS.items()
                  if (gradients or method.model_agnostic)
                  and (linear_head or not method.needs_linear_head)
                  and (spatial_attention or not method.needs_spatial_attention)
                  and (guided or not method.needs_guided_activations))
