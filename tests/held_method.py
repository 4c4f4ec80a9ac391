"""A Grad-CAM held at an event: it plays the slow explanation, so tests of slots, queues and
busy answers do not depend on how fast the machine is."""

from __future__ import annotations

import threading

from core.explain.gradcam import GradCAM

# A layer below the classifier's: Grad-CAM there runs a forward and a backward on torch (at the
# classifier's layer it comes from ONNX Runtime: core.pipeline.from_feature_map).
GRADIENT_LAYER = "blocks.15"


class HeldGradCAM(GradCAM):
    """Grad-CAM that says when it has started and waits to be released before computing; it
    records the images of each run."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []

    def __call__(self, model, inputs, *args, **kwargs):
        self.batches.append(len(inputs))
        self.started.set()
        assert self.release.wait(timeout=120), "the test never released the held explanation"
        return super().__call__(model, inputs, *args, **kwargs)
