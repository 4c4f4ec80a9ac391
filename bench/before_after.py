"""The serving and explain paths of two versions side by side, each as a real server, their
requests interleaved in one run: revision BEFORE (default HEAD~1) against revision AFTER
(default this working tree).

  python -m bench.before_after [BEFORE [AFTER]] [--only TEXT]

Both servers use this checkout's Python environment; revisions are checked out into temporary
git worktrees, removed afterwards. EfficientNet-Lite0 at 224 on CPU, chelsea (and the foolbox photos, 512 x 512),
and uploads of one ResNet-18's weights (random, 10 classes) at 64 px.
Each row: median ms per request of each version, and the median over rounds of after/before.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from bench.common import Client, interleaved, report, run_timed, running_server
from support import chelsea, encode, foolbox_imagenet_photos, multipart

ROOT = Path(__file__).resolve().parents[1]
MODEL = "efficientnet_lite0"
PREDICT, EXPLAIN = f"/v1/models/{MODEL}/predict", f"/v1/models/{MODEL}/explain"


def cases() -> dict[str, tuple[str, tuple[bytes, str], int]]:
    """name -> (path, multipart body, requests per round)."""
    photo = [("chelsea.jpg", encode(chelsea()))]
    photos = [(path.name, path.read_bytes()) for path, _ in foolbox_imagenet_photos()]
    return {
        "predict": (PREDICT, multipart(photo), 10),
        "predict, 8 foolbox photos": (PREDICT, multipart(photos[:8]), 5),
        "predict, 64 foolbox photos": (PREDICT, multipart([photos[index % len(photos)] for index in range(64)]), 2),
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
        # 11 versions of one model (under GAZER_MAX_VERSIONS_PER_MODEL's 20): warm-up, then 5 rounds of 2
        "upload: ResNet-18 safetensors at 64 px": ("/v1/models", multipart(
            [("resnet18.safetensors", resnet18_weights())], {"name": "uploaded", "architecture": "resnet18",
                                                             "input_size": 64}, file_field="weights"), 2),
    }


def resnet18_weights() -> bytes:
    import torch
    import torchvision
    from safetensors.torch import save

    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=10)
    return save({key: value.contiguous() for key, value in network.state_dict().items()})


def main() -> None:
    parser = argparse.ArgumentParser(description="two revisions' servers side by side")
    parser.add_argument("before", nargs="?", default="HEAD~1")
    parser.add_argument("after", nargs="?", help="default: this working tree")
    parser.add_argument("--only", default="", help="only the cases whose name holds this text")
    arguments = parser.parse_args()
    before_revision, after_revision = arguments.before, arguments.after
    with tempfile.TemporaryDirectory(prefix="gazer-before-after-") as folder:
        checkouts = {"before": Path(folder) / "before", "after": Path(folder) / "after" if after_revision else None}
        for name, revision in (("before", before_revision), ("after", after_revision)):
            if revision:
                subprocess.run(["git", "worktree", "add", "--detach", str(checkouts[name]), revision], cwd=ROOT,
                               check=True, capture_output=True)
        try:
            rows = []
            with running_server(8765, checkouts["before"]), running_server(8766, checkouts["after"]):
                # fresh connections: the first server closes an idle keep-alive while the second starts
                before, after = Client(8765), Client(8766)
                for name, (path, body, per_round) in cases().items():
                    if arguments.only not in name:
                        continue
                    times = interleaved({"before": lambda: before.post(path, *body),
                                         "after": lambda: after.post(path, *body)},
                                        rounds=5, per_round=per_round, warmup=1)
                    rows.append((name, f"before {times['before']:8.1f} ms   after {times['after']:8.1f} ms   "
                                       f"after/before {times.ratio('after', 'before'):.3f}x"))
            report(f"{before_revision} (before) against {after_revision or 'this working tree'} (after), "
                   f"one server each, interleaved", rows)
        finally:
            for checkout in checkouts.values():
                if checkout is not None and checkout.exists():
                    subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=ROOT, check=False)


if __name__ == "__main__":
    run_timed(main)
