"""Activation maximization of classes on EfficientNet-Lite0 (CPU).

  python -m bench.activation_maximization [--steps 100] [--parameterization fft]

Checks that the synthesized image of each of 10 random classes is classified as that class
(goal p >= 0.9 for at least 9 of 10), and times 100 steps with 1 and with 16 targets.
"""

from __future__ import annotations

import argparse
import random
import time

from bench.common import ignore_progress, report
from core.models.catalog import load_builtin
from core.visualize.activation_max import MaximizationConfig, maximize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--parameterization", default="fft")
    args = parser.parse_args()
    spec, network = load_builtin("efficientnet_lite0")
    classes = tuple(random.Random(2026).sample(range(1000), 10))
    started = time.perf_counter()
    config = MaximizationConfig(classes=classes, steps=args.steps, parameterization=args.parameterization)
    result = maximize(network, spec, config, ignore_progress, lambda: False)
    seconds = time.perf_counter() - started
    hits = sum(p >= 0.9 for p in result.probabilities)
    report(f"10 random classes, {args.steps} steps, {args.parameterization}, one batch ({seconds:.0f} s)",
           [(f"{c} {spec.labels[c][:30]}", f"p = {p:.3f}") for c, p in zip(classes, result.probabilities)]
           + [("classified as the class with p >= 0.9", f"{hits}/10  (goal >= 9)")])
    rows = []
    for count in (1, 16):
        config = MaximizationConfig(classes=tuple(range(count)), steps=20, parameterization=args.parameterization)
        maximize(network, spec, MaximizationConfig(classes=(0,), steps=2), ignore_progress, lambda: False)
        started = time.perf_counter()
        maximize(network, spec, config, ignore_progress, lambda: False)
        per_hundred = (time.perf_counter() - started) * 100 / config.steps
        rows.append((f"{count} target(s) in one job", f"{per_hundred:.1f} s per 100 steps"
                                                      f" ({per_hundred / count:.1f} s per target)"))
    report("speed at 224 px, CPU", rows)


if __name__ == "__main__":
    main()
