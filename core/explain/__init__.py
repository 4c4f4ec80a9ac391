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
}


def supported_methods(linear_head: bool, spatial_attention: bool) -> list[str]:
    """The methods a model with this head and these attention modules can answer."""
    return sorted(name for name, method in METHODS.items()
                  if (linear_head or not method.needs_linear_head)
                  and (spatial_attention or not method.needs_spatial_attention))
