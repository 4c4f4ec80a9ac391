"""Activation maximization's image parameterization against Lucid's (lucid/optvis/param)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.visualize.activation_max import _Image

# lucid/optvis/param/color.py
LUCID_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


def lucid_fft_image(spectrum: np.ndarray, height: int, width: int) -> np.ndarray:
    """lucid/optvis/param/spatial.py fft_image, then color.to_valid_rgb(decorrelate=True,
    sigmoid=True), for a (batch, 3, h, w // 2 + 1) complex spectrum: (batch, 3, h, w) in [0, 1]."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[: width // 2 + 2] if width % 2 == 1 else np.fft.fftfreq(width)[: width // 2 + 1]
    freqs = np.sqrt(fx * fx + fy * fy)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(width, height)) * np.sqrt(width * height)
    image = np.fft.irfft2(scale * spectrum, s=(height, width)) / 4.0  # TF's irfft2d: 1 / (h w), as numpy's
    normalized = LUCID_COLOR_SQRT / np.max(np.linalg.norm(LUCID_COLOR_SQRT, axis=0))
    decorrelated = np.einsum("bchw,dc->bdhw", image, normalized)
    return 1.0 / (1.0 + np.exp(-decorrelated))


@pytest.mark.parametrize("size", [32, 64])
def test_the_fourier_image_renders_as_lucids_does(size):
    """Adam is blind to a constant scale of the image, so a different constant is a different
    learning rate: at 16 times Lucid's, the default lr of 0.05 (Lucid's) left 30% of the pixels
    saturated at 0 or 255 after 200 steps at 224 px."""
    image = _Image(2, size, "fft", torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        image.param.mul_(30.0)  # far from the initial 0.01 noise, where the sigmoid is no longer linear
        ours = image().numpy()
    spectrum = image.param.detach().numpy()
    reference = lucid_fft_image(spectrum[..., 0] + 1j * spectrum[..., 1], size, size)
    assert np.abs(ours - reference).max() < 1e-6
    assert reference.std() > 0.05  # a picture, not mid-grey


def test_set_from_inverts_the_rendering():
    """The blur step sets the parameters from a blurred picture: they must render it back."""
    image = _Image(1, 48, "fft", torch.Generator().manual_seed(1)).double()
    target = torch.rand((1, 3, 48, 48), generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.8 + 0.1
    image.set_from(target)
    with torch.no_grad():
        assert (image() - target).abs().max() < 1e-6
