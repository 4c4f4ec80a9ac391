"""The serving and explain paths of two versions side by side: this checkout against a git
revision (default HEAD~1), each as a real server, their requests interleaved in one run.

  python -m bench.before_after [REV]

Both servers use this checkout's Python environment; the revision is checked out into a
temporary git worktree, removed afterwards. EfficientNet-Lite0 at 224 on CPU, chelsea.
Each row: median ms per request of each version, and the median over rounds of after/before.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import interleaved, report, run_timed, running_server
from support import chelsea, encode, multipart

ROOT = Path(__file__).resolve().parents[1]
MODEL = "efficientnet_lite0"
PREDICT, EXPLAIN = f"/v1/models/{MODEL}/predict", f"/v1/models/{MODEL}/explain"


def cases() -> dict[str, tuple[str, tuple[bytes, str], int]]:
    """name -> (path, multipart body, requests per round)."""
    photo = [("chelsea.jpg", encode(chelsea()))]
    return {
        "predict": (PREDICT, multipart(photo), 10),
        "cam (default outputs)": (EXPLAIN, multipart(photo, {"method": "cam"}), 10),
        "cam, outputs=heatmap": (EXPLAIN, multipart(photo, {"method": "cam", "outputs": "heatmap"}), 10),
        "gradcam": (EXPLAIN, multipart(photo, {"method": "gradcam"}), 10),
        "gradcam++ at blocks.10": (EXPLAIN, multipart(photo, {"method": "gradcam++", "layer": "blocks.10"}), 10),
        "integrated_gradients, 16 steps": (EXPLAIN, multipart(photo, {"method": "integrated_gradients",
                                                                      "steps": 16}), 3),
        "smoothgrad, 8 samples": (EXPLAIN, multipart(photo, {"method": "smoothgrad", "samples": 8}), 3),
        "scorecam at blocks.15": (EXPLAIN, multipart(photo, {"method": "scorecam", "layer": "blocks.15"}), 1),
        "gradcam, 8 images": (EXPLAIN, multipart(photo * 8, {"method": "gradcam", "outputs": "heatmap"}), 2),
        "gradcam + faithfulness": (EXPLAIN, multipart(photo, {"method": "gradcam", "faithfulness": "true"}), 3),
    }


def main() -> None:
    revision = sys.argv[1] if len(sys.argv) > 1 else "HEAD~1"
    with tempfile.TemporaryDirectory(prefix="gazer-before-") as folder:
        before_checkout = Path(folder) / "checkout"
        subprocess.run(["git", "worktree", "add", "--detach", str(before_checkout), revision], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            rows = []
            with running_server(8765, before_checkout) as before, running_server(8766) as after:
                for name, (path, body, per_round) in cases().items():
                    times = interleaved({"before": lambda: before.post(path, *body),
                                         "after": lambda: after.post(path, *body)},
                                        rounds=5, per_round=per_round, warmup=1)
                    rows.append((name, f"before {times['before']:8.1f} ms   after {times['after']:8.1f} ms   "
                                       f"after/before {times.ratio('after', 'before'):.3f}x"))
            report(f"{revision} (before) against this checkout (after), one server each, interleaved", rows)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before_checkout)], cwd=ROOT, check=False)


if __name__ == "__main__":
    run_timed(main)
