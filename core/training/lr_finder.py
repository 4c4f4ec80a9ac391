"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates", as fastai's `lr_find`):
train on mini-batches with a learning rate rising exponentially from `start` to `end`, smooth
the loss (an exponential moving average, debiased), stop once it diverges (4x its best), and
pick a rate in the longest valley of the smoothed loss (fastai's `valley`). The network's
weights are put back after."""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from core.jobs import JobCancelled, ShouldStop

START_LR, END_LR, MAX_STEPS = 1e-7, 10.0, 100
MIN_STEPS = 30
SMOOTHING = 0.98     # fastai's beta
DIVERGENCE = 4.0     # stop when the smoothed loss passes this multiple of its best
PLOT = "lr-finder.png"
# Where the loss never rose: seen on a few batches cycled ten times over, whose loss falls at any
# rate as the head learns them (24 training images with SE attention: 0.062 chosen, and the first
# epoch's loss was 39.8 where chance is 1.1; in 11 of 12 other runs on such sets the rate it chose
# did as well as 1e-3 or better)
UNBOUNDED_NOTE = ("the loss did not rise over the whole scan, so the test found no rate that is too high, and the "
                  "chosen one may be: on a small data set, cycled through many times, the loss falls at any rate as "
                  "the head learns it. If the first epoch's loss is far above the next, give lr.")


@dataclass
class LrCurve:
    lrs: list[float]
    losses: list[float]      # smoothed
    chosen: float
    diverged: bool

    def as_dict(self) -> dict:
        return {"lrs": [float(f"{lr:.4g}") for lr in self.lrs], "losses": [round(loss, 5) for loss in self.losses],
                "chosen": self.chosen, "diverged": self.diverged, "method": "valley of the smoothed loss (fastai)",
                **({} if self.diverged else {"note": UNBOUNDED_NOTE})}


def steps_for(batches_per_epoch: int) -> int:
    """Two epochs' worth of batches, 30 to 100: a small data set is not cycled 100 times over."""
    return max(MIN_STEPS, min(MAX_STEPS, 2 * batches_per_epoch))


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's `valley` suggestion: the rate halfway down the longest valley of the
    smoothed loss (its longest decreasing subsequence), skipping the noisy start and the
    diverging end as fastai does. The steepest single step, used before, fell on noise: on 30
    steps it chose 8.5e-6, where a tiny data set's loss dipped once, and the model stayed at chance."""
    skip_start, skip_end = len(lrs) // 10, min(5, len(lrs) // 10)
    usable_lrs, usable = lrs[skip_start:len(lrs) - skip_end], losses[skip_start:len(losses) - skip_end]
    if len(usable) < 2:
        return lrs[0]
    longest = [1] * len(usable)  # the longest decreasing subsequence ending at each point
    start, end = 0, 0
    for i in range(1, len(usable)):
        for j in range(i):
            if usable[i] < usable[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[end] < longest[i]:
                end, start = i, i - longest[i] + 1
    third = (end - start) / 3
    return float(usable_lrs[start + int(third) + int(third / 2)])


def lr_range_test(network: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[tuple[torch.Tensor,
                  torch.Tensor]], should_stop: ShouldStop, start: float = START_LR, end: float = END_LR,
                  steps: int = MAX_STEPS, group: int = 0,
                  step_report: Callable[[int, int], None] | None = None) -> LrCurve:
    """Runs the test on `optimizer`'s param group `group` (the others keep their rates) over
    up to `steps` batches of (inputs, labels); the network's and optimizer's state are restored
    after. `batches` should cycle (a small data set has fewer batches than steps)."""
    saved_network, saved_optimizer = copy.deepcopy(network.state_dict()), copy.deepcopy(optimizer.state_dict())
    ratio = (end / start) ** (1 / max(steps - 1, 1))
    lrs: list[float] = []
    losses: list[float] = []
    average, best, diverged = 0.0, math.inf, False
    try:
        for step in range(steps):
            if should_stop():
                raise JobCancelled()
            lr = start * ratio ** step
            optimizer.param_groups[group]["lr"] = lr
            inputs, labels = next(batches)
            loss = nn.functional.cross_entropy(network(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                diverged = True
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            lrs.append(lr)
            losses.append(smoothed)
            if step_report is not None:
                step_report(step + 1, steps)
            best = min(best, smoothed)
            if step > 0 and smoothed > DIVERGENCE * best:
                diverged = True
                break
    finally:
        network.load_state_dict(saved_network)
        optimizer.load_state_dict(saved_optimizer)
    if not lrs:
        return LrCurve([start], [math.nan], start, diverged)
    return LrCurve(lrs, losses, valley(lrs, losses), diverged)


def plot_png(curve: LrCurve, width: int = 640, height: int = 400) -> bytes:
    """Smoothed loss against log10(lr), the chosen rate marked: a PNG."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 20, 30, height - 40
    draw.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    logs = np.log10(np.asarray(curve.lrs))
    losses = np.asarray(curve.losses)
    span_x = max(float(logs[-1] - logs[0]), 1e-9)
    low, high = float(np.nanmin(losses)), float(np.nanmax(losses))
    span_y = max(high - low, 1e-9)

    def at(log_lr: float, loss: float) -> tuple[float, float]:
        return (left + (log_lr - logs[0]) / span_x * (right - left),
                bottom - (loss - low) / span_y * (bottom - top))

    for decade in range(math.ceil(logs[0]), math.floor(logs[-1]) + 1):
        x, _ = at(decade, low)
        draw.line((x, bottom, x, bottom + 5), fill=(80, 80, 80))
        draw.text((x - 12, bottom + 8), f"1e{decade}", fill=(0, 0, 0))
    if len(logs) > 1:
        draw.line([at(x, y) for x, y in zip(logs, losses)], fill=(31, 119, 180), width=2)
    chosen_x, _ = at(math.log10(curve.chosen), low)
    draw.line((chosen_x, top, chosen_x, bottom), fill=(214, 39, 40), width=1)
    draw.text((left, 8), f"LR range test: smoothed loss vs learning rate; chosen {curve.chosen:.3g}", fill=(0, 0, 0))
    draw.text((left - 55, top), f"{high:.3g}", fill=(0, 0, 0))
    draw.text((left - 55, bottom - 10), f"{low:.3g}", fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def lr_finder_result(metrics: dict, folder: Path, url: Callable[[str], str]) -> dict:
    """A fine-tune result's `lr_finder` (its curve, the chosen rate, the plot's URL), the plot
    written to `folder`; {} when the run had its rate given."""
    if "lr_finder" not in metrics:
        return {}
    curve = metrics["lr_finder"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PLOT).write_bytes(plot_png(LrCurve(curve["lrs"], curve["losses"], curve["chosen"], curve["diverged"])))
    return {"lr_finder": {**curve, "plot": url(PLOT)}}
