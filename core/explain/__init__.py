"""Explanation methods by name."""

from __future__ import annotations

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
}
