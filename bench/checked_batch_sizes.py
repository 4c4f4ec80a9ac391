"""What running an uploaded ONNX graph only at its checked batch sizes costs (onnx_probe.batches:
1, 2, 4, ..., GAZER_MAX_BATCH; 7 images run as 4 + 2 + 1), on a ResNet-18 at 224 with random weights:

  python -m bench.checked_batch_sizes [--clients 8] [--seconds 6] [--rounds 3]

- 1 to 8 images, in one run and in checked sizes (median ms, interleaved);
- a closed loop of `--clients` threads, each keeping one image in flight through the serving
  batcher (core.batching, two runners as on this CPU), both ways in alternating rounds.
"""

from __future__ import annotations

import argparse
import io
import threading
import time

import numpy as np
import torch
import torchvision

from bench.common import interleaved, report, run_timed, scratch_dir
from core.batching import Batcher
from core.models.onnx_probe import batches as checked_sizes
from core.runtime.onnx_predictor import OnnxPredictor

MAX_BATCH = 32


def resnet18_onnx() -> bytes:
    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=1000).eval()
    buffer = io.BytesIO()
    torch.onnx.export(network, (torch.zeros(1, 3, 224, 224),), buffer, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buffer.getvalue()


def closed_loop(predictor: OnnxPredictor, clients: int, seconds: float, image: np.ndarray) -> float:
    """Images per second with `clients` threads each keeping one image in flight."""
    batcher = Batcher("bench", lambda outputs, items: predictor.run_batches(outputs, items), MAX_BATCH,
                      runners=predictor.concurrent_runs)
    done = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        while time.perf_counter() < deadline:
            batcher(("logits",), image, 1)
            done[index] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    path = scratch_dir() / "resnet18.onnx"
    path.write_bytes(resnet18_onnx())
    predictors = {"any size": OnnxPredictor(path, MAX_BATCH),
                  "checked sizes": OnnxPredictor(path, MAX_BATCH, checked_sizes(MAX_BATCH))}
    images = np.random.default_rng(0).uniform(-1, 1, (8, 3, 224, 224)).astype(np.float32)

    rows = []
    for count in range(1, 9):
        timings = interleaved({name: lambda predictor=predictor: predictor.run_batches(("logits",), [images[:count]])
                               for name, predictor in predictors.items()}, rounds=3, per_round=3, warmup=1)
        runs = " + ".join(map(str, predictors["checked sizes"].run_sizes(count)))
        rows.append((f"{count} images", f"{timings['any size']:.1f} / {timings['checked sizes']:.1f} ms ({runs}), "
                                         f"{timings['checked sizes'] / timings['any size']:.2f}x"))
    report("ResNet-18 ONNX at 224: one run / runs of checked sizes (median)", rows)

    rates: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(args.rounds):
        for name, predictor in predictors.items():
            rates[name].append(closed_loop(predictor, args.clients, args.seconds, images[:1]))
    median = {name: float(np.median(values)) for name, values in rates.items()}
    report(f"{args.clients} clients in a closed loop through the batcher, {args.rounds} alternating rounds of "
           f"{args.seconds:g} s (median images/s)", [
               *[(name, f"{median[name]:.1f}  ({', '.join(f'{value:.1f}' for value in rates[name])})")
                 for name in predictors],
               ("checked sizes / any size", f"{median['checked sizes'] / median['any size']:.2f}x")])


if __name__ == "__main__":
    run_timed(main)
