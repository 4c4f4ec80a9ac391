"""Our explainers against independent implementations, on a tiny network built here.

References: pytorch-grad-cam (Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM) and captum
(Saliency, GuidedBackprop, IntegratedGradients, LayerGradCam / GuidedGradCam). The network
runs in float64 and keeps full resolution up to the explained layer (stride 1, padding 1), so
pytorch-grad-cam's resize of each map to the input size is an identity and maps compare
pixel for pixel. Maps must agree to 1e-4 on the [0, 1] scale; raw input attributions must
agree to float64 round-off.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from captum import attr as captum_attr
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from core.explain import METHODS, supported_methods
from core.explain.base import normalize_maps
from core.explain.guided_backprop import guides
from core.explain.smoothgrad import smoothgrad_noise

MAP_TOL = 1e-4
SIZE = 16
TARGETS = (1, 3, 4)
CAM_LAYER = "features.relu2"      # feeds global average pooling + classifier
INNER_LAYER = "features.relu1"    # an earlier layer, 8 channels


class TinyNet(nn.Module):
    """conv-relu-conv-relu, global average pool, linear `classifier`; every ReLU its own module."""

    def __init__(self, pool_between: bool = False, classes: int = 5) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = [("conv1", nn.Conv2d(3, 8, 3, padding=1)), ("relu1", nn.ReLU())]
        if pool_between:
            layers.append(("pool1", nn.MaxPool2d(2)))
        layers += [("conv2", nn.Conv2d(8, 16, 3, padding=1)), ("relu2", nn.ReLU())]
        self.features = nn.Sequential(OrderedDict(layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def make_net(pool_between: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = TinyNet(pool_between)
    with torch.no_grad():
        # Larger weights than the default init keep maps well above the 1e-7 epsilon that
        # pytorch-grad-cam's min-max scaling adds, so it does not eat into the 1e-4 tolerance.
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.mul_(3.0)
    return net.double().eval()


def make_inputs(count: int = 3, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((count, 3, SIZE, SIZE), generator=generator, dtype=torch.float64)


def targets_tensor(targets=TARGETS) -> torch.Tensor:
    return torch.tensor(targets, dtype=torch.long)


def max_diff(a, b) -> float:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def assert_raw_close(ours: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-8) -> None:
    """Raw attributions: equal up to round-off relative to each image's largest value."""
    assert ours.shape == reference.shape
    assert torch.isfinite(ours).all()
    scale = reference.flatten(1).abs().max(dim=1).values
    assert (scale > 0).all(), "degenerate reference: an all-zero attribution"
    error = (ours - reference).flatten(1).abs().max(dim=1).values
    assert (error <= rtol * scale).all(), f"relative error {(error / scale).max().item():.3g}"


def assert_maps_close(ours: np.ndarray, reference: np.ndarray, tol: float = MAP_TOL) -> float:
    assert ours.shape == reference.shape
    assert np.isfinite(ours).all()
    # A reference with nothing in it would make any comparison pass.
    assert (reference.reshape(len(reference), -1).max(axis=1) > 0.99).all()
    assert (reference.reshape(len(reference), -1).std(axis=1) > 0.05).all()
    difference = max_diff(ours, reference)
    assert difference <= tol, f"max abs difference {difference:.3g} > {tol}"
    return difference


# --- CAM family against pytorch-grad-cam -------------------------------------------------

def grad_cam_reference(cls, net: nn.Module, layer: str, inputs: torch.Tensor, targets) -> np.ndarray:
    with cls(model=net, target_layers=[net.get_submodule(layer)]) as cam:
        maps = cam(inputs, [ClassifierOutputTarget(int(target)) for target in targets])
    net.zero_grad(set_to_none=True)  # pytorch-grad-cam calls loss.backward()
    return maps


def rescaled_like_pytorch_grad_cam(maps: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam min-max scales each map twice: per target layer, then again after
    averaging over target layers. Ours scales once, with the same formula. Applying the
    second pass to ours gives the exact same normalization on both sides."""
    return scale_cam_image(maps)


CAM_REFERENCES = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
}


@pytest.mark.parametrize("layer", [CAM_LAYER, INNER_LAYER])
@pytest.mark.parametrize("method", sorted(CAM_REFERENCES))
def test_cam_family_matches_pytorch_grad_cam(method, layer):
    net, inputs = make_net(), make_inputs()
    reference = grad_cam_reference(CAM_REFERENCES[method], net, layer, inputs, TARGETS)
    explanation = METHODS[method](net, inputs, targets_tensor(), layer)
    assert explanation.maps.shape == (3, SIZE, SIZE)
    assert explanation.maps.dtype == np.float32
    assert explanation.targets.tolist() == list(TARGETS)
    difference = assert_maps_close(rescaled_like_pytorch_grad_cam(explanation.maps), reference)
    print(f"{method} at {layer}: max abs difference {difference:.2e}")


def test_cam_family_default_targets_are_the_top_class():
    net, inputs = make_net(), make_inputs()
    logits = net(inputs).detach()
    for method in CAM_REFERENCES:
        explanation = METHODS[method](net, inputs, None, CAM_LAYER)
        assert explanation.targets.tolist() == logits.argmax(dim=1).tolist()
        assert max_diff(explanation.logits, logits) < 1e-12
        with CAM_REFERENCES[method](model=net, target_layers=[net.get_submodule(CAM_LAYER)]) as cam:
            reference = cam(inputs, None)  # pytorch-grad-cam's own choice: the top class
        net.zero_grad(set_to_none=True)
        assert_maps_close(rescaled_like_pytorch_grad_cam(explanation.maps), reference)


def test_cam_equals_grad_cam_at_the_layer_before_pooling():
    """With global average pooling then a linear layer, Grad-CAM's channel weights are the
    class's classifier weights divided by h*w, so CAM and Grad-CAM agree after scaling."""
    net, inputs = make_net(), make_inputs()
    reference = grad_cam_reference(GradCAM, net, CAM_LAYER, inputs, TARGETS)
    explanation = METHODS["cam"](net, inputs, targets_tensor(), CAM_LAYER, classifier="classifier")
    difference = assert_maps_close(rescaled_like_pytorch_grad_cam(explanation.maps), reference)
    print(f"cam vs pytorch-grad-cam GradCAM: max abs difference {difference:.2e}")
    # And CAM is Zhou et al.'s sum over channels of w[target, c] * A_c, computed here by hand.
    features = net.features(inputs).detach()
    by_hand = torch.einsum("bc,bchw->bhw", net.classifier.weight.detach()[targets_tensor()], features)
    assert_maps_close(explanation.maps, normalize_maps(torch.relu(by_hand)), tol=1e-6)


# --- input-gradient methods against captum -----------------------------------------------

def channel_max_abs(attributions: torch.Tensor) -> np.ndarray:
    return normalize_maps(attributions.abs().amax(dim=1))


def test_saliency_matches_captum():
    net, inputs = make_net(), make_inputs()
    ours, logits, targets = METHODS["saliency"].attribute(net, inputs, targets_tensor())
    reference = captum_attr.Saliency(net).attribute(inputs, target=targets_tensor(), abs=False)
    assert_raw_close(ours, reference)
    assert targets.tolist() == list(TARGETS)
    assert max_diff(logits, net(inputs)) < 1e-12
    maps = METHODS["saliency"](net, inputs, targets_tensor()).maps
    assert_maps_close(maps, channel_max_abs(reference))


def test_guided_backprop_matches_captum():
    net, inputs = make_net(), make_inputs()
    ours, _, _ = METHODS["guided_backprop"].attribute(net, inputs, targets_tensor())
    reference = captum_attr.GuidedBackprop(net).attribute(inputs, target=targets_tensor())
    assert_raw_close(ours, reference)
    # Guided backprop really differs from plain gradients on this net.
    plain = captum_attr.Saliency(net).attribute(inputs, target=targets_tensor(), abs=False)
    assert max_diff(reference, plain) > 1e-3 * float(plain.abs().max())
    maps = METHODS["guided_backprop"](net, inputs, targets_tensor()).maps
    assert_maps_close(maps, channel_max_abs(reference))


@pytest.mark.parametrize("activation, guided", [(torch.nn.ReLU, True), (torch.nn.ReLU6, True),
                                                 (torch.nn.SiLU, False), (torch.nn.GELU, False),
                                                 (torch.nn.Hardswish, False)])
def test_guided_backprop_is_offered_only_where_it_differs_from_the_plain_gradient(activation, guided):
    """On SiLU, GELU or Hardswish it is the input gradient under another name: not offered."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), activation(), torch.nn.Conv2d(8, 8, 3), activation(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
                              torch.nn.Sigmoid()).double().eval()  # a gate, which is not guided
    inputs = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    guided_map, _, _ = METHODS["guided_backprop"].attribute(net, inputs, torch.tensor([0, 1]))
    plain = captum_attr.Saliency(net).attribute(inputs, target=torch.tensor([0, 1]), abs=False)
    assert (max_diff(guided_map, plain) > 1e-6) == guided == guides(net)
    assert ({"guided_backprop", "guided_gradcam"} <= set(supported_methods(True, False, guided=guides(net)))) == guided
    assert not guides(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten()))  # no activation modules


@pytest.mark.parametrize("steps", [1, 7, 32])
def test_integrated_gradients_matches_captum_gauss_legendre(steps):
    net, inputs = make_net(), make_inputs()
    baseline = 0.3 * torch.randn(inputs.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    # internal_batch_size 5 does not divide steps * images: chunks straddle two images.
    ours, _, _ = METHODS["integrated_gradients"].attribute(net, inputs, targets_tensor(), steps=steps,
                                                          baseline=baseline, internal_batch_size=5)
    reference = captum_attr.IntegratedGradients(net).attribute(
        inputs, baselines=baseline, target=targets_tensor(), n_steps=steps, method="gausslegendre")
    # captum multiplies by its quadrature weights as float32 (torch.tensor(step_sizes).float()):
    # relative differences of ~5e-9 at 32 steps come from there.
    assert_raw_close(ours, reference, rtol=1e-6)
    maps = METHODS["integrated_gradients"](net, inputs, targets_tensor(), steps=steps, baseline=baseline).maps
    assert_maps_close(maps, normalize_maps(reference.sum(dim=1).abs()))


def test_integrated_gradients_completeness():
    """Sum of attributions -> f(x) - f(baseline) as the quadrature gets finer (axiom 'completeness')."""
    net, inputs = make_net(), make_inputs()
    baseline = torch.zeros_like(inputs)
    ours, logits, targets = METHODS["integrated_gradients"].attribute(net, inputs, targets_tensor(), steps=256,
                                                                      baseline=baseline, internal_batch_size=256)
    gap = (logits - net(baseline).detach()).gather(1, targets[:, None])[:, 0]
    assert torch.allclose(ours.flatten(1).sum(dim=1), gap, rtol=2e-2, atol=1e-6 * float(gap.abs().max()))


def test_smoothgrad_is_the_mean_of_captum_saliency_over_the_same_noise():
    net, inputs = make_net(), make_inputs()
    samples, noise, seed = 6, 0.2, 11
    ours, _, _ = METHODS["smoothgrad"].attribute(net, inputs, targets_tensor(), samples=samples, noise=noise,
                                                seed=seed, internal_batch_size=4)
    noises = smoothgrad_noise(inputs, samples, noise, seed)
    assert noises.shape == (samples, *inputs.shape)
    saliency = captum_attr.Saliency(net)
    reference = torch.stack([saliency.attribute(inputs + sample, target=targets_tensor(), abs=False)
                             for sample in noises]).mean(dim=0)
    assert_raw_close(ours, reference)
    maps = METHODS["smoothgrad"](net, inputs, targets_tensor(), samples=samples, noise=noise, seed=seed).maps
    assert_maps_close(maps, channel_max_abs(reference))


def test_smoothgrad_noise_scale_and_seed():
    inputs = make_inputs()
    inputs[1] *= 10.0  # a wider value range must get proportionally wider noise
    noises = smoothgrad_noise(inputs, 64, 0.15, seed=3)
    spread = (inputs.flatten(1).max(dim=1).values - inputs.flatten(1).min(dim=1).values)
    measured = noises.transpose(0, 1).flatten(1).std(dim=1)
    assert torch.allclose(measured, 0.15 * spread, rtol=0.03)
    assert torch.equal(noises, smoothgrad_noise(inputs, 64, 0.15, seed=3))
    assert not torch.equal(noises, smoothgrad_noise(inputs, 64, 0.15, seed=4))


@pytest.mark.parametrize("pool_between", [False, True], ids=["same-resolution", "half-resolution"])
def test_guided_gradcam_matches_captum(pool_between):
    """captum's GuidedGradCam multiplies guided backprop by the *raw* ReLU'd Grad-CAM map,
    upsampled with F.interpolate; ours by the [0, 1]-scaled map, upsampled bilinearly
    (align_corners=False, the F.interpolate default captum uses for mode="bilinear"). Where the
    map's minimum is 0 the two differ by one positive factor per image: 1 / max."""
    net, inputs = make_net(pool_between), make_inputs()
    layer = net.get_submodule(CAM_LAYER)
    grad_cam = captum_attr.LayerGradCam(net, layer).attribute(inputs, target=targets_tensor(),
                                                              relu_attributions=True)
    assert grad_cam.shape[-1] == (SIZE // 2 if pool_between else SIZE)
    assert (grad_cam.flatten(1).min(dim=1).values == 0).all(), "test premise: every map has a zero"
    reference = captum_attr.GuidedGradCam(net, layer).attribute(inputs, target=targets_tensor(),
                                                               interpolate_mode="bilinear")
    ours, _, _ = METHODS["guided_gradcam"].attribute(net, inputs, targets_tensor(), CAM_LAYER)
    factor = grad_cam.flatten(1).max(dim=1).values.float().double()
    # Our Grad-CAM map is scaled in float32: round-off is float32's.
    assert_raw_close(ours * factor[:, None, None, None], reference, rtol=1e-6)
    maps = METHODS["guided_gradcam"](net, inputs, targets_tensor(), CAM_LAYER).maps
    # min-max scaling is scale-free: the factor goes (ours peaks near 4e-5 on this net, captum's near 2e-3)
    assert_maps_close(maps, channel_max_abs(reference))


# --- batches: per-image targets ----------------------------------------------------------

LAYER_OF = {name: (CAM_LAYER if method.uses_layer else None) for name, method in METHODS.items()}
OPTIONS = {"integrated_gradients": {"steps": 8, "internal_batch_size": 5},
           "smoothgrad": {"samples": 4, "internal_batch_size": 3},
           "scorecam": {"batch_size": 5},
           "cam": {"classifier": "classifier"},
           "occlusion": {"window": 4, "stride": 2},
           "rise": {"masks": 200}}


@pytest.mark.parametrize("method, options", [
    *[(name, OPTIONS.get(name, {})) for name in sorted(METHODS)],
    ("integrated_gradients", {"steps": 4, "baseline": "uniform", "seed": 2}),
    ("integrated_gradients", {"steps": 4, "baseline": "blur"}),
], ids=[*sorted(METHODS), "integrated_gradients-uniform", "integrated_gradients-blur"])
def test_batch_with_per_image_targets_equals_images_alone(method, options):
    """An image's explanation must not depend on which other images share its batch (seeded
    noise and random baselines included): requests may be batched together."""
    net, inputs = make_net(), make_inputs()
    batch = METHODS[method](net, inputs, targets_tensor(), LAYER_OF[method], **options)
    assert batch.targets.tolist() == list(TARGETS)
    for index, target in enumerate(TARGETS):
        alone = METHODS[method](net, inputs[index:index + 1], torch.tensor([target]), LAYER_OF[method], **options)
        assert max_diff(batch.maps[index], alone.maps[0]) <= 1e-5, f"image {index}"
        assert max_diff(batch.logits[index], alone.logits[0]) <= 1e-10


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"attention"}))  # its map has no target
def test_each_image_gets_its_own_target(method):
    """The same image three times with three targets: three different maps, each the map that
    image gets alone for that target (no target is applied to another image)."""
    net = make_net()
    image = make_inputs(1)
    inputs = image.repeat(3, 1, 1, 1)
    options = OPTIONS.get(method, {})
    explained = METHODS[method](net, inputs, targets_tensor(), LAYER_OF[method], **options)
    assert explained.targets.tolist() == list(TARGETS)
    batch = explained.maps
    for index, target in enumerate(TARGETS):
        alone = METHODS[method](net, image, torch.tensor([target]), LAYER_OF[method], **options).maps[0]
        assert max_diff(batch[index], alone) <= 1e-5
    assert batch.max() > 0
    for first, second in ((0, 1), (0, 2), (1, 2)):
        if batch[first].max() == batch[second].max() == 0:
            continue  # no evidence for either (occlusion: hiding any window raises both): flat, alike
        assert max_diff(batch[first], batch[second]) > 1e-2, f"targets {TARGETS[first]} and {TARGETS[second]}"
