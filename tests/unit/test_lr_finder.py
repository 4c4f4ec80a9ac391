"""The learning-rate range test on a tiny model: the rate it picks lies inside the range swept
and where the loss still falls, the curve is recorded, and the model is left as it was."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
from PIL import Image
from torch import nn

import numpy as np

from core.training.lr_finder import SMOOTHING, LrCurve, lr_range_test, plot_png, valley


def blobs(seed: int = 0, count: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes, Gaussian blobs 3 standard deviations apart in 8 dimensions."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=generator)
    points = torch.randn(count, 8, generator=generator) + 3 * labels[:, None].float() * torch.ones(8) / math.sqrt(8)
    return points, labels


def cycled(points: torch.Tensor, labels: torch.Tensor, batch: int = 16):
    for start in itertools.cycle(range(0, len(labels), batch)):
        yield points[start:start + batch], labels[start:start + batch]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def test_the_range_test_picks_a_rate_where_the_loss_falls_and_leaves_the_model_as_it_was():
    model = tiny_model()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps_seen = []
    curve = lr_range_test(model, optimizer, cycled(*blobs()), lambda: False, start=1e-5, end=100, steps=100,
                          step_report=lambda step, steps: steps_seen.append(step))
    assert 1e-5 <= curve.chosen <= 100
    assert curve.diverged and len(curve.lrs) < 100  # SGD at lr 100 blows up: the test stops early
    assert len(curve.lrs) == len(curve.losses) == len(steps_seen)
    assert all(b > a for a, b in zip(curve.lrs, curve.lrs[1:]))
    at = curve.lrs.index(min(curve.lrs, key=lambda lr: abs(math.log(lr / curve.chosen))))
    assert curve.losses[min(at + 3, len(curve.losses) - 1)] < curve.losses[max(at - 3, 0)]  # falling there
    assert 1e-3 <= curve.chosen <= 10, curve.chosen  # not the flat start, not the blow-up
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert optimizer.param_groups[0]["lr"] == 0.1 and not optimizer.state

    # the chosen rate trains the model; one 1000x larger does not
    points, labels = blobs(1)
    losses = {}
    for factor in (1, 1000):
        model = tiny_model()
        sgd = torch.optim.SGD(model.parameters(), lr=curve.chosen * factor, momentum=0.9)
        for inputs, truth in itertools.islice(cycled(points, labels), 60):
            sgd.zero_grad()
            nn.functional.cross_entropy(model(inputs), truth).backward()
            sgd.step()
        losses[factor] = nn.functional.cross_entropy(model(points), labels).item()
    assert losses[1] < 0.3 and not losses[1000] < losses[1], losses


def test_the_valley_of_a_known_curve():
    lrs = [10 ** (-6 + i * 0.1) for i in range(61)]
    # a smooth step down centred at 1e-3, flat elsewhere, then a blow-up at the end
    losses = [1 - 0.8 / (1 + math.exp(-4 * (math.log10(lr) + 3))) + (5 if i > 57 else 0) for i, lr in enumerate(lrs)]
    assert 10 ** -3.3 < valley(lrs, losses) < 10 ** -2.7


def smoothed(raw: list[float]) -> list[float]:
    """As lr_range_test smooths the loss: a debiased exponential moving average."""
    average, out = 0.0, []
    for step, value in enumerate(raw):
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        out.append(average / (1 - SMOOTHING ** (step + 1)))
    return out


@pytest.mark.parametrize("seed", range(10))
def test_a_short_noisy_range_test_picks_a_rate_where_the_loss_falls_not_a_dip_of_noise(seed):
    """A tiny data set's 30 steps: the loss flat but noisy up to 1e-4, falling to 0.8, then
    diverging. The steepest single step (before) chose a noise dip under 1e-4 for 4 of these 10."""
    rng = np.random.default_rng(seed)
    lrs = [1e-7 * (10 / 1e-7) ** (k / 29) for k in range(30)]
    raw = [1.6 + 0.15 * rng.standard_normal() if lr < 1e-4
           else 1.6 - 0.75 * (math.log10(lr) + 4) / 3.9 + 0.05 * rng.standard_normal() if lr < 0.8
           else 1.0 + 3 * (math.log10(lr) + 0.1) for lr in lrs]
    assert 1e-4 < valley(lrs, smoothed(raw)) < 0.8


def test_the_curve_plot_is_a_png():
    curve = LrCurve([1e-5, 1e-4, 1e-3, 1e-2, 1e-1], [1.0, 0.9, 0.5, 0.4, 2.0], 1e-3, True)
    image = Image.open(io.BytesIO(plot_png(curve)))
    assert image.format == "PNG" and image.size == (640, 400)
    assert curve.as_dict()["chosen"] == 1e-3 and len(curve.as_dict()["losses"]) == 5
    assert "note" not in curve.as_dict()  # it found where the loss blows up
    unbounded = LrCurve([1e-5, 1e-4, 1e-3, 1e-2, 1e-1], [1.0, 0.9, 0.5, 0.4, 0.3], 1e-3, False).as_dict()
    assert "found no rate that is too high" in unbounded["note"]


def test_lr_auto_in_a_fine_tune_runs_the_range_test_and_trains_at_the_chosen_rate(tmp_path):

    from core.job_runners import fine_tune_config
    from core.models.registry import ModelRegistry
    from core.storage import Storage
    from core.training.finetune import fine_tune
    from support import SHAPE_CLASSES, shape_image

    rng = np.random.default_rng(0)
    items = []
    for label, kind in enumerate(SHAPE_CLASSES):
        for index in range(4):
            path = tmp_path / f"{kind}-{index}.png"
            shape_image(kind, rng, 48).save(path)
            items.append((path, label))
    spec, network = ModelRegistry(Storage(tmp_path / "data"), 1).load_network("efficientnet_lite0")
    config = fine_tune_config({"dataset_id": "shapes", "output_model": "auto", "strategy": "feature_extraction",
                               "epochs": 1, "batch_size": 4, "input_size": 32, "lr": "auto"})
    reports = []
    trained = fine_tune(config, spec, network, list(SHAPE_CLASSES), items,
                        lambda fraction, **details: reports.append((fraction, details.get("phase"))), lambda: False,
                        torch.device("cpu"), 10**7)
    curve = trained.metrics["lr_finder"]
    # the range test moves the bar through its share (at most 30 steps against 2 of training, 9
    # images in batches of 4, the last image joining the batch before it: it may stop early where
    # the loss diverges), which the training then takes on from; it sat at 0
    testing = [fraction for fraction, phase in reports if phase == "lr range test"]
    assert 0 < testing[0] < testing[-1] <= 30 / 32 + 1e-9 and testing == sorted(testing)
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert 1e-7 <= curve["chosen"] <= 10 and len(curve["lrs"]) == len(curve["losses"]) <= 30
    assert trained.metrics["history"][0]["train_loss"] > 0
