"""ONNX Runtime's intra-op threads never spinning (Gazer before), spinning for a bounded
SPIN_MICROSECONDS after each task (core.runtime.onnx_predictor, now) and spinning as long as
ORT's default, side by side on EfficientNet-Lite0 with two threads:

- one client: a batch-1 run, then 8 ms of other work on the calling thread (a request's
  decoding), again and again; the run's latency and the process's CPU per cycle;
- under load: batches of 4 back to back; CPU per image.

  python -m bench.ort_spinning
"""

from __future__ import annotations

import resource
import time
from typing import Callable

import numpy as np
import onnxruntime

from bench.common import _registry, report, run_timed, served_model
from core.models.onnx_export import onnx_path
from core.runtime.onnx_predictor import SPIN_MICROSECONDS

DECODING_SECONDS = 0.008
CONFIGS = {
    "never": {"session.intra_op.allow_spinning": "0"},
    "bounded": {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": str(SPIN_MICROSECONDS)},
    "default": {},
}


def _session(path: str, config: dict[str, str]) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _one_client(run: Callable[[], object], cycles: int) -> tuple[float, float]:
    """(median run ms, core-ms per cycle) of runs each followed by DECODING_SECONDS of busy work."""
    latencies, cpu_before = [], _cpu_seconds()
    for _ in range(cycles):
        started = time.perf_counter()
        run()
        latencies.append(time.perf_counter() - started)
        busy_until = time.perf_counter() + DECODING_SECONDS
        while time.perf_counter() < busy_until:
            pass
    return float(np.median(latencies)) * 1000, (_cpu_seconds() - cpu_before) * 1000 / cycles


def _back_to_back(run: Callable[[], object], runs: int, batch: int) -> float:
    """Core-ms per image of `runs` runs of `batch` images, one after another."""
    cpu_before = _cpu_seconds()
    for _ in range(runs):
        run()
    return (_cpu_seconds() - cpu_before) * 1000 / (runs * batch)


def main() -> None:
    spec = served_model("efficientnet_lite0").spec
    path = str(onnx_path(_registry().storage.onnx_cache, spec))
    sessions = {name: _session(path, config) for name, config in CONFIGS.items()}
    name = sessions["never"].get_inputs()[0].name
    one, four = (np.random.default_rng(0).random((count, 3, spec.input_size, spec.input_size), dtype=np.float32)
                 for count in (1, 4))
    rounds: dict[str, list[tuple[float, float, float]]] = {config: [] for config in CONFIGS}
    for _ in range(5):  # interleaved: the machine's slow spells fall on every contender alike
        for config, session in sessions.items():
            for _ in range(3):
                session.run(None, {name: one})
            latency, cycle_cpu = _one_client(lambda: session.run(None, {name: one}), 40)
            per_image = _back_to_back(lambda: session.run(None, {name: four}), 10, 4)
            rounds[config].append((latency, cycle_cpu, per_image))

    def median(config: str, index: int) -> float:
        return float(np.median([values[index] for values in rounds[config]]))

    def paired(config: str, index: int) -> float:
        return float(np.median([a[index] / b[index] for a, b in zip(rounds[config], rounds["never"])]))

    rows = []
    for config in CONFIGS:
        rows.append((f"{config}: batch-1 run, one client", f"{median(config, 0):5.2f} ms ({paired(config, 0):.2f}x never)"))
        rows.append((f"{config}: process CPU per cycle", f"{median(config, 1):5.1f} core-ms ({paired(config, 1):.2f}x)"))
        rows.append((f"{config}: batch 4 back to back", f"{median(config, 2):5.2f} core-ms per image "
                                                        f"({paired(config, 2):.2f}x)"))
    report(f"ONNX Runtime spinning, EfficientNet-Lite0, 2 threads, {DECODING_SECONDS * 1000:.0f} ms of other work "
           f"between one client's runs; bounded = {SPIN_MICROSECONDS} us (median of 5 interleaved rounds)", rows)


if __name__ == "__main__":
    run_timed(main)
