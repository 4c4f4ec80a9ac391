"""Every GPU figure in one run: predictions on ONNX Runtime and through the service, decoding the
photos on the device (GAZER_DECODE_ON_DEVICE), Grad-CAM, integrated gradients, Score-CAM,
fine-tuning and activation maximization, on the device that core.runtime.devices picks (CUDA when
there is one).

  python -m bench.gpu            # on the GPU machine: a few minutes
  python -m bench.gpu --smoke    # tiny counts, any machine: checks that every part runs

EfficientNet-Lite0 at 224 as the service loads it. Prints the two goals' ratios: service predict
throughput against raw ONNX Runtime at batch 256 (goal >= 0.5) and Grad-CAM at batch 1 against a
forward (goal <= 1.5x). The service runs with one API process, then with four, decoding on the
CPU, then with one decoding on the device.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from bench.common import (Client, ignore_progress, interleaved, report, run_timed, running_server_process,
                          scratch_dir, served_model)
from core import device_preprocessing, imaging
from core.explain import METHODS
from core.explain.baselines import make_baseline
from core.models.onnx_export import ensure_onnx
from core.models.registry import LoadedModel
from core.parallel import cpu_count
from core.pipeline import onnx_scorer
from core.runtime.devices import fast_layout, fast_math
from core.runtime.onnx_predictor import OnnxPredictor
from core.training.config import FineTuneConfig
from core.training.finetune import fine_tune, head_modules, set_trainable, trainable_backbone
from core.visualize.activation_max import maximize
from core.visualize.config import MaximizationConfig, Target
from infra.embedded_redis import free_port
from infra.settings import SharedSettings
from support import foolbox_imagenet_photos, multipart, shape_image

MODEL = "efficientnet_lite0"
TABBY = 281


@dataclass(frozen=True)
class Sizes:
    """How much of everything: the full run, or --smoke's tiny counts."""

    rounds: int
    per_round: int
    warmup: int
    predict_batches: tuple[int, int]      # the two throughput batches (64 and 256)
    request_images: int                   # images per service request (the API takes 64 at most)
    api_processes: tuple[int, ...]        # the service's GAZER_API_PROCESSES, one server each
    load_seconds: float
    gradcam_batches: tuple[int, ...]
    ig_steps: int
    scorecam_layer: str
    train_images: int
    train_size: int
    train_epochs: int
    plain_steps: int
    maximize_steps: int
    maximize_targets: tuple[int, int]
    maximize_size: int | None             # None: the model's input size
    decode_batch: int                     # photos decoded together on the device


FULL = Sizes(rounds=7, per_round=10, warmup=3, predict_batches=(64, 256), request_images=64, api_processes=(1, 4),
             load_seconds=15.0,
             gradcam_batches=(1, 8, 32), ig_steps=50, scorecam_layer="blocks.15", train_images=2048, train_size=224,
             train_epochs=3, plain_steps=20, maximize_steps=50, maximize_targets=(1, 16), maximize_size=None,
             decode_batch=256)
SMOKE = Sizes(rounds=1, per_round=1, warmup=1, predict_batches=(2, 4), request_images=2, api_processes=(1, 2),
              load_seconds=2.0,
              gradcam_batches=(1, 2), ig_steps=4, scorecam_layer="blocks.0", train_images=16, train_size=64,
              train_epochs=1, plain_steps=2, maximize_steps=2, maximize_targets=(1, 2), maximize_size=64,
              decode_batch=2)


def synced(function: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """`function` timed to its end on the device, not to the moment CUDA accepted the work."""
    def run() -> None:
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


@functools.cache
def photos() -> list:
    return [imaging.decode_image(path.read_bytes(), 10**8) for path, _ in foolbox_imagenet_photos()]


def photo_batch(model: LoadedModel, count: int) -> np.ndarray:
    return imaging.preprocess([photos()[index % len(photos())] for index in range(count)], model.spec)[0]


def onnx_runtime(model: LoadedModel, sizes: Sizes, folder: Path) -> dict[int, float]:
    """Raw ONNX Runtime: latency at batch 1, images/s at the two throughput batches; the plain
    run against I/O binding, and the float16 export."""
    predictor, device = model.predictor, model.device
    half = OnnxPredictor(ensure_onnx(model.network, model.spec, folder, half=True))
    binding_device = predictor.bound_device or "cpu"
    one = photo_batch(model, 1)
    timings = interleaved({"batch 1": lambda: predictor.logits(one)}, sizes.rounds, sizes.per_round, sizes.warmup)
    rows = [("providers", ", ".join(predictor.providers)),
            ("batch 1, ms", f"{timings['batch 1']:.2f}")]
    throughput = {}
    for batch_size in sizes.predict_batches:
        batch = photo_batch(model, batch_size)
        times = interleaved({
            "run": lambda: predictor.session.run(["logits"], {predictor.input_name: batch}),
            "bound": lambda: predictor.run_bound(["logits"], batch, binding_device),
            "fp16": lambda: half.logits(batch),
        }, sizes.rounds, max(1, sizes.per_round // 2), sizes.warmup)
        throughput[batch_size] = batch_size * 1000 / min(times["run"], times["bound"])
        rows += [(f"batch {batch_size}, images/s: session.run", f"{batch_size * 1000 / times['run']:.0f}"),
                 (f"batch {batch_size}, images/s: I/O binding ({binding_device})",
                  f"{batch_size * 1000 / times['bound']:.0f}"),
                 (f"batch {batch_size}, images/s: float16 export", f"{batch_size * 1000 / times['fp16']:.0f}")]
    report(f"ONNX Runtime, {MODEL} ({device})", rows)
    return throughput


def closed_loop(port: int, body: tuple[bytes, str], clients: int, seconds: float) -> tuple[int, list[float]]:
    """Requests answered and their latencies, `clients` posting `body` back to back."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def run() -> None:
        client, mine = Client(port), []
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            client.post(f"/v1/models/{MODEL}/predict", *body)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), latencies


def decode_bound(model: LoadedModel) -> tuple[float, float]:
    """CPU ms of one photo's decode and preprocessing (one thread, the best of 3 passes over the
    20 photos), and the images/s that all of this machine's cores could decode at that cost."""
    blobs = [path.read_bytes() for path, _ in foolbox_imagenet_photos()]
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for blob in blobs:
            imaging.preprocess([imaging.decode_image(blob, 10**8)], model.spec)
        best = min(best, (time.process_time() - started) * 1000 / len(blobs))
    return best, cpu_count() * 1000 / best


def service_predict(model: LoadedModel, sizes: Sizes, raw: dict[int, float]) -> None:
    """Through HTTP: one image per request (latency), then requests of `request_images` photos
    from enough clients to keep each throughput batch's worth of images in flight, with one API
    process and with several (GAZER_API_PROCESSES)."""
    photos = [(path.name, path.read_bytes()) for path, _ in foolbox_imagenet_photos()]
    single = multipart(photos[:1])
    many = multipart([photos[index % len(photos)] for index in range(sizes.request_images)])
    milliseconds, bound = decode_bound(model)
    rows = [("decode + preprocess of one photo, CPU ms", f"{milliseconds:.2f}"),
            (f"  so {cpu_count()} cores decode at most, images/s", f"{bound:.0f}")]
    top = sizes.predict_batches[-1]
    for processes, on_device in [(processes, False) for processes in sizes.api_processes] + [(1, True)]:
        port = free_port()
        where = "decoding on the device" if on_device else "decoding on the CPU"
        with running_server_process(port, api_processes=str(processes), decode_on_device=str(on_device)):
            client = Client(port)
            path = f"/v1/models/{MODEL}/predict"
            if processes == 1:
                timings = interleaved({"one": lambda: client.post(path, *single)}, sizes.rounds, sizes.per_round,
                                      sizes.warmup)
                rows.append((f"1 image per request, {where}, p50 ms", f"{timings['one']:.2f}"))
            closed_loop(port, many, max(1, top // sizes.request_images), min(2.0, sizes.load_seconds))  # warm-up
            for in_flight in sizes.predict_batches:
                clients = max(1, in_flight // sizes.request_images)
                started = time.perf_counter()
                answered, latencies = closed_loop(port, many, clients, sizes.load_seconds)
                images_per_second = answered * sizes.request_images / (time.perf_counter() - started)
                rows.append((f"{processes} API process(es), {where}, {clients} clients x {sizes.request_images} "
                             f"images, images/s", f"{images_per_second:.0f} (p50 {statistics.median(latencies) * 1000:.0f} "
                                          f"ms per request)"))
            if top in raw:  # absent where the raw ONNX Runtime part failed
                rows.append((f"  service / raw ONNX Runtime at batch {top}",
                             f"{images_per_second / raw[top]:.2f}  (goal >= 0.5)"))
            rows.append(("  service / the cores' decode bound", f"{images_per_second / bound:.2f}"))
    report("service predict over HTTP, foolbox JPEGs (512 x 512)", rows)


def device_decode(model: LoadedModel, sizes: Sizes, raw: dict[int, float]) -> None:
    """core.device_preprocessing alone (GAZER_DECODE_ON_DEVICE's path): a batch of the photos
    decoded (nvJPEG) and preprocessed on the device, in images/s, against the CPU's decode bound
    and raw ONNX Runtime, and how far its pixels are from the CPU path's (in 0-255 levels)."""
    device, spec = model.predictor.input_device, model.spec  # as the service picks it
    blobs = [path.read_bytes() for path, _ in foolbox_imagenet_photos()]
    batch = [blobs[index % len(blobs)] for index in range(sizes.decode_batch)]
    timings = interleaved({"device": lambda: device_preprocessing.preprocess(batch, spec, "crop", device)},
                          sizes.rounds, max(1, sizes.per_round // 5), sizes.warmup)
    levels = (device_preprocessing.preprocess(blobs, spec, "crop", device).cpu()
              - torch.from_numpy(imaging.preprocess(photos(), spec)[0])).abs() * torch.tensor(spec.std)[:, None, None]
    milliseconds, bound = decode_bound(model)
    per_second = sizes.decode_batch * 1000 / timings["device"]
    rows = [(f"{sizes.decode_batch} photos decoded and preprocessed on {device}, images/s", f"{per_second:.0f}"),
            (f"  against the {cpu_count()} CPU cores' decode bound ({milliseconds:.2f} ms a photo)",
             f"{per_second / bound:.2f}x")]
    if raw:
        top = max(raw)
        rows.append((f"  against raw ONNX Runtime at batch {top}", f"{per_second / raw[top]:.2f}x"))
    rows.append(("  pixels against the CPU path's, mean / max levels", f"{levels.mean():.2f} / {levels.max():.1f}"))
    report("decoding on the device (core.device_preprocessing)", rows)


def gradcam(model: LoadedModel, sizes: Sizes) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    network, device = model.network, model.device
    fast_network = fast_layout(copy.deepcopy(network))
    for batch_size in sizes.gradcam_batches:
        inputs = torch.from_numpy(photo_batch(model, batch_size)).to(device)
        fast_inputs = fast_layout(inputs)
        targets = torch.full((batch_size,), TABBY, device=device)

        def forward() -> None:
            with torch.no_grad():
                network(inputs)

        def fast() -> None:
            with fast_math(device, bfloat16=True):
                METHODS["gradcam"](fast_network, fast_inputs, targets, "head")

        with GradCAM(model=network, target_layers=[network.head]) as reference:
            times = interleaved({
                "forward": synced(forward, device),
                "gradcam": synced(lambda: METHODS["gradcam"](network, inputs, targets, "head"), device),
                "fast": synced(fast, device),
                "reference": synced(lambda: reference(input_tensor=inputs, targets=[
                    ClassifierOutputTarget(TABBY)] * batch_size), device),
            }, sizes.rounds, sizes.per_round, sizes.warmup)
        goal = "  (goal <= 1.5x)" if batch_size == 1 else ""
        report(f"Grad-CAM at the default layer, batch {batch_size} ({device}), median ms", [
            ("torch forward (no_grad)", f"{times['forward']:.2f}"),
            ("gazer gradcam, float32 (the service's default)", f"{times['gradcam']:.2f}"),
            ("gazer gradcam, bfloat16 autocast (GAZER_CUDA_BFLOAT16)", f"{times['fast']:.2f}"),
            ("pytorch-grad-cam GradCAM", f"{times['reference']:.2f}"),
            ("gradcam / forward", f"{times.ratio('gradcam', 'forward'):.2f}x{goal}"),
            ("gradcam bfloat16 / forward", f"{times.ratio('fast', 'forward'):.2f}x"),
            ("pytorch-grad-cam / gazer", f"{times.ratio('reference', 'gradcam'):.2f}x"),
        ])


def integrated_gradients_and_scorecam(model: LoadedModel, sizes: Sizes) -> None:
    from captum.attr import IntegratedGradients

    network, device = model.network, model.device
    inputs = torch.from_numpy(photo_batch(model, 1)).to(device)
    target = torch.tensor([TABBY], device=device)
    baseline = make_baseline("black", inputs, model.spec.mean, model.spec.std)
    captum = IntegratedGradients(network)
    times = interleaved({
        "gazer": synced(lambda: METHODS["integrated_gradients"].attribute(
            network, inputs, target, steps=sizes.ig_steps, baseline=baseline), device),
        "captum": synced(lambda: captum.attribute(inputs, baselines=baseline, target=TABBY,
                                                  n_steps=sizes.ig_steps), device),
    }, sizes.rounds, 1, warmup=1)
    report(f"integrated gradients, {sizes.ig_steps} steps, black baseline ({device}), median ms", [
        ("gazer", f"{times['gazer']:.1f}"),
        (f"captum IntegratedGradients(n_steps={sizes.ig_steps})", f"{times['captum']:.1f}"),
        ("captum / gazer", f"{times.ratio('captum', 'gazer'):.2f}x"),
    ])
    score = onnx_scorer(model)
    layer = sizes.scorecam_layer
    times = interleaved({
        "torch": synced(lambda: METHODS["scorecam"](network, inputs, target, layer), device),
        "onnx": synced(lambda: METHODS["scorecam"](network, inputs, target, layer, score=score), device),
    }, sizes.rounds, 1, warmup=1)
    report(f"Score-CAM at {layer} ({model.layers.get(layer, '?')} masked inputs, {device}), median ms", [
        ("masked inputs scored by torch (what the service does on CUDA)", f"{times['torch']:.0f}"),
        ("scored by ONNX Runtime (what it does on the CPU)", f"{times['onnx']:.0f}"),
        ("torch / ONNX Runtime", f"{times.ratio('torch', 'onnx'):.2f}x"),
    ])


def shape_items(folder: Path, count: int, size: int) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = ["disc", "square"]
    rng = np.random.default_rng(0)
    items = []
    for index in range(count):
        label = index % len(classes)
        path = folder / f"{classes[label]}-{index}.png"
        shape_image(classes[label], rng, size).save(path)
        items.append((path, label))
    return classes, items


def plain_training(network: nn.Module, config: FineTuneConfig, device: torch.device, steps: int,
                   input_size: int, bfloat16: bool) -> float:
    """Images/s of a bare loop over the job's network and trainable layers (channels_last), on
    random tensors."""
    network = fast_layout(copy.deepcopy(network).to(device))
    set_trainable(network, head_modules(network) + trainable_backbone(network, config, epoch=1))
    optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-4)
    inputs = fast_layout(torch.randn(config.batch_size, 3, input_size, input_size, device=device))
    labels = torch.randint(0, 2, (config.batch_size,), device=device)

    def step() -> None:
        with fast_math(device, bfloat16):
            loss = nn.functional.cross_entropy(network(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    run = synced(step, device)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    return steps * config.batch_size / (time.perf_counter() - started)


def fine_tuning(model: LoadedModel, sizes: Sizes, folder: Path) -> None:
    device = model.device
    classes, items = shape_items(folder, sizes.train_images, sizes.train_size)
    config = FineTuneConfig(base_model=MODEL, dataset_id="bench", output_model="bench", strategy="fine_tune",
                            epochs=sizes.train_epochs, batch_size=min(32, sizes.train_images // 2),
                            input_size=sizes.train_size, early_stopping_patience=sizes.train_epochs)
    base = copy.deepcopy(model.network).cpu()
    result = fine_tune(config, model.spec, base, classes, items, ignore_progress, lambda: False, device,
                       SharedSettings().max_image_pixels)
    # per epoch: on an H200 the first two ran at 521 and 306 images/s, the third at 1416: each new
    # batch shape and set of trainable layers pays cuDNN's set-up (fine_tuning_profile: 12 ms of CPU
    # per convolution call), which the plain loop pays before it is timed
    epochs = [record["images_per_second"] for record in result.metrics["history"]]
    job = epochs[-1]
    network = result.network
    plain = plain_training(network, config, device, sizes.plain_steps, sizes.train_size, bfloat16=True)
    plain_fp32 = plain_training(network, config, device, sizes.plain_steps, sizes.train_size, bfloat16=False)
    report(f"fine-tuning, batch {config.batch_size} at {sizes.train_size} px ({device}), images/s", [
        ("fine-tune job loop per epoch (augmentation included; float32, channels_last)",
         ", ".join(f"{value:.1f}" for value in epochs)),
        ("plain loop, same layers, float32 + channels_last", f"{plain_fp32:.1f}"),
        ("plain loop, bfloat16 autocast + channels_last", f"{plain:.1f}"),
        ("job's last epoch / plain (float32)", f"{job / plain_fp32:.2f}x"),
    ])


def fine_tuning_profile(model: LoadedModel, sizes: Sizes, folder: Path) -> None:
    """Where a fine-tune job's time goes: one short job under torch's profiler, its ops by their
    own CPU time and by their own device time."""
    from torch.profiler import ProfilerActivity, profile

    device = model.device
    count = max(4, sizes.train_images // 8)
    classes, items = shape_items(folder, count, sizes.train_size)
    config = FineTuneConfig(base_model=MODEL, dataset_id="bench", output_model="bench", strategy="fine_tune",
                            epochs=1, batch_size=min(32, count // 2), input_size=sizes.train_size)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    base = copy.deepcopy(model.network).cpu()
    with profile(activities=activities) as profiler:
        result = fine_tune(config, model.spec, base, classes, items, ignore_progress, lambda: False, device,
                           SharedSettings().max_image_pixels)
    epoch = result.metrics["history"][0]
    print(f"\n## fine-tuning under the profiler: {count} images, one epoch at "
          f"{epoch['images_per_second']:.1f} images/s")
    averages = profiler.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))
    if device.type == "cuda":
        print(averages.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=50))


def activation_maximization(model: LoadedModel, sizes: Sizes) -> None:
    rows = []
    for count in sizes.maximize_targets:
        config = MaximizationConfig(target=Target(classes=tuple(range(count))), steps=sizes.maximize_steps,
                                    size=sizes.maximize_size)
        maximize(model.network, model.spec, MaximizationConfig(target=Target(classes=(0,)), steps=1,
                                                               size=sizes.maximize_size),
                 ignore_progress, lambda: False, model.layers)
        started = time.perf_counter()
        maximize(model.network, model.spec, config, ignore_progress, lambda: False, model.layers)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        per_hundred = (time.perf_counter() - started) * 100 / config.steps
        rows.append((f"{count} target(s) in one job", f"{per_hundred:.2f} s per 100 steps "
                                                      f"({per_hundred / count:.2f} s per target)"))
    report(f"activation maximization at {sizes.maximize_size or model.spec.input_size} px ({model.device})", rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts: checks that every part runs")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    folder = scratch_dir("gazer-bench-gpu-")
    model = served_model(MODEL)
    name = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "CPU"
    print(f"device: {model.device} ({name}); ONNX Runtime providers: {model.predictor.providers}")
    raw: dict[int, float] = {}
    parts = [lambda: raw.update(onnx_runtime(model, sizes, folder)), lambda: service_predict(model, sizes, raw),
             lambda: device_decode(model, sizes, raw),
             lambda: gradcam(model, sizes), lambda: integrated_gradients_and_scorecam(model, sizes),
             lambda: fine_tuning(model, sizes, folder), lambda: activation_maximization(model, sizes),
             lambda: fine_tuning_profile(model, sizes, folder)]
    failed = 0
    for part in parts:  # each on its own: a lent machine's minutes are few, and one failure should not cost the rest
        try:
            part()
        except Exception:
            traceback.print_exc()
            failed += 1
    if failed:
        raise SystemExit(f"{failed} of {len(parts)} parts failed")


if __name__ == "__main__":
    run_timed(main)
