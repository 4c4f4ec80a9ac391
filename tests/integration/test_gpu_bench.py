"""bench/gpu.py runs only where a GPU machine is lent, in device minutes that are counted: its
--smoke run (tiny counts, on whatever device is here) makes sure every part of it still runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("ONNX Runtime, efficientnet_lite0", "service predict over HTTP", "decoding on the device",
            "Grad-CAM at the default layer, batch 1",
            "integrated gradients", "Score-CAM", "fine-tuning", "activation maximization")


def test_the_gpu_benchmark_runs_every_part_and_prints_both_goals():
    run = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for title in SECTIONS:
        assert f"\n== {title}" in run.stdout, title
    assert "(goal >= 0.5)" in run.stdout and "(goal <= 1.5x)" in run.stdout
