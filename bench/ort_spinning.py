"""ONNX Runtime's intra-op threads never spinning (Gazer before), spinning a bounded
SPIN_MICROSECONDS after each task (core.runtime.onnx_predictor, now), spinning 100 us, and
spinning as long as ORT's default, side by side on EfficientNet-Lite0 with two threads:

- one client: a batch-1 run, then 8 ms of other work on the calling thread (a request's
  decoding), again and again; the run's latency and the process's CPU per cycle;
- under load: batches of 2 back to back on one thread while two others decode and preprocess
  the foolbox photos, as the server's CPU pool does; images/s of each.

  python -m bench.ort_spinning
"""

from __future__ import annotations

import resource
import threading
import time

import numpy as np
import onnxruntime

from bench.common import _registry, report, run_timed, served_model
from bench.load import photos
from core import imaging
from core.models.onnx_export import onnx_path
from core.runtime.onnx_predictor import SPIN_MICROSECONDS

DECODING_SECONDS = 0.008
LOAD_SECONDS = 4.0
CONFIGS = {
    "never": {"session.intra_op.allow_spinning": "0"},
    f"{SPIN_MICROSECONDS} us (shipped)": {"session.intra_op.allow_spinning": "1",
                                          "session.intra_op.spin_duration_us": str(SPIN_MICROSECONDS)},
    "100 us": {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": "100"},
    "ORT's default": {},
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


def _one_client(session: onnxruntime.InferenceSession, inputs: dict, cycles: int = 40) -> tuple[float, float]:
    """(median run ms, core-ms per cycle) of runs each followed by DECODING_SECONDS of busy work."""
    latencies, cpu_before = [], _cpu_seconds()
    for _ in range(cycles):
        started = time.perf_counter()
        session.run(None, inputs)
        latencies.append(time.perf_counter() - started)
        busy_until = time.perf_counter() + DECODING_SECONDS
        while time.perf_counter() < busy_until:
            pass
    return float(np.median(latencies)) * 1000, (_cpu_seconds() - cpu_before) * 1000 / cycles


def _under_load(session: onnxruntime.InferenceSession, inputs: dict, blobs: list[bytes], spec) -> tuple[float, float]:
    """(ORT images/s, decoded images/s) with runs back to back beside two decoding threads."""
    stop = time.perf_counter() + LOAD_SECONDS
    counts = {"ort": 0, "decoded": 0}
    batch = len(next(iter(inputs.values())))

    def run() -> None:
        while time.perf_counter() < stop:
            session.run(None, inputs)
            counts["ort"] += batch

    def decode() -> None:
        while time.perf_counter() < stop:
            imaging.preprocess([imaging.decode_image(blobs[counts["decoded"] % len(blobs)], 10**8)], spec)
            counts["decoded"] += 1

    threads = [threading.Thread(target=work) for work in (run, decode, decode)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts["ort"] / LOAD_SECONDS, counts["decoded"] / LOAD_SECONDS


def main() -> None:
    spec = served_model("efficientnet_lite0").spec
    path = str(onnx_path(_registry().storage.onnx_cache, spec))
    sessions = {name: _session(path, config) for name, config in CONFIGS.items()}
    name = sessions["never"].get_inputs()[0].name
    two = np.random.default_rng(0).random((2, 3, spec.input_size, spec.input_size), dtype=np.float32)
    blobs = photos()
    rounds: dict[str, list[tuple[float, ...]]] = {config: [] for config in CONFIGS}
    for _ in range(4):  # interleaved: the machine's slow spells fall on every contender alike
        for config, session in sessions.items():
            for _ in range(3):
                session.run(None, {name: two[:1]})
            rounds[config].append(_one_client(session, {name: two[:1]}) + _under_load(session, {name: two}, blobs, spec))

    def median(config: str, index: int) -> float:
        return float(np.median([values[index] for values in rounds[config]]))

    def paired(config: str, index: int) -> float:
        return float(np.median([a[index] / b[index] for a, b in zip(rounds[config], rounds["never"])]))

    rows = []
    for config in CONFIGS:
        rows += [
            (f"{config}: batch-1 run, one client", f"{median(config, 0):5.2f} ms ({paired(config, 0):.2f}x never)"),
            (f"{config}: CPU per one-client cycle", f"{median(config, 1):5.1f} core-ms ({paired(config, 1):.2f}x)"),
            (f"{config}: under load, ORT", f"{median(config, 2):5.1f} images/s ({paired(config, 2):.2f}x)"),
            (f"{config}: under load, decoding", f"{median(config, 3):5.1f} images/s ({paired(config, 3):.2f}x)"),
        ]
    report("ONNX Runtime spinning, EfficientNet-Lite0, 2 threads (median of 4 interleaved rounds)", rows)


if __name__ == "__main__":
    run_timed(main)
