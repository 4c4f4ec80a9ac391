"""Predictions on ONNX Runtime: one session per model, outputs `logits` and `features`."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, NoSuchFile

from core.errors import ModelFailed, ModelNotReady
from core.parallel import cpu_count
from core.runtime.denormals import flush_denormals_in
from core.runtime.devices import onnx_providers

# An input batch: on the host, or a float32 torch tensor where core.device_preprocessing made it
Batch = np.ndarray | torch.Tensor

SECOND_SESSION_MAX_BYTES = 64 * 2**20  # Lite0-2, ResNet-18 and EfficientNet-B0 fit; ResNet-50 (98 MB) does not
# Long enough to bridge the gaps between a run's nodes; at 100 us a loaded server's spinning
# threads took 20% of ORT's throughput beside decoding (bench.ort_spinning)
SPIN_MICROSECONDS = 10
SPIN_DURATION_SINCE = (1, 32)  # the ONNX Runtime release checked to know session.intra_op.spin_duration_us
_NODE_FAILED = re.compile(r"while running (\S+) node\. Name:'([^']*)' Status Message: (.*)", re.DOTALL)
# what the machine did, not the graph: a node's allocation, or a CUDA library's failure
_MACHINE_FAILED = re.compile(r"alloc|out of memory|cuda|cublas|cudnn|cufft|curand", re.IGNORECASE)


class OnnxPredictor:
    """One model's ONNX Runtime session.

    On a CPU, a run that starts while another is in flight takes a second session with half
    the cores' threads: two runs of a thread per core each, beside the decoding of the next
    requests, oversubscribe the cores, and a run's threads wait for whichever was descheduled.
    Alone, a run takes the session with a thread per core, which is what a single client's
    latency needs (bench/load.py: predict at 1 and 8 clients).

    The second session is a second copy of the weights, so a model over SECOND_SESSION_MAX_BYTES
    runs one batch at a time instead: for vgg11_bn (a 506 MB file) it would cost 764 MB more.
    Two runs pay on a small model, whose single run leaves cores idle (Lite0 in process at 8
    clients: 60.6 images/s with one run at a time, 68.7-70.1 with two).
    """

    def __init__(self, path: Path, max_batch: int = 1024, batch_sizes: tuple[int, ...] | None = None) -> None:
        """`max_batch`: run_batches runs at most this many images at once (the batcher's first
        request is taken whole, and RISE scores 128 masked images in one call). `batch_sizes`:
        an uploaded graph's checked sizes (ModelSpec.batch_sizes), the only ones it is run at, so
        that a run's memory and time are what the check measured."""
        self.path = path
        self.max_batch = max_batch if batch_sizes is None else min(max_batch, max(batch_sizes))
        self.batch_sizes = batch_sizes
        self.session = _session(path, threads=0)  # 0: ORT's default, a thread per core
        self.input_name = self.session.get_inputs()[0].name
        self.bound_device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else None
        self._small = path.stat().st_size <= SECOND_SESSION_MAX_BYTES
        self._shared_session: onnxruntime.InferenceSession | None = None
        self._in_flight = 0
        self._lock = threading.Lock()
        self._making_shared = threading.Lock()

    @property
    def concurrent_runs(self) -> int:
        """How many runs a batcher should keep in flight: two for a small model on a CPU of several
        cores, else one."""
        return 2 if self.bound_device is None and cpu_count() >= 2 and self._small else 1

    @property
    def input_device(self) -> torch.device:
        """Where a run reads its input without a copy: ONNX Runtime's CUDA device (its default, 0)
        when it runs there, else the CPU."""
        return torch.device("cuda", 0) if self.bound_device == "cuda" else torch.device("cpu")

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, outputs: list[str], batch: Batch) -> list[np.ndarray]:
        """`outputs` for `batch`; on the GPU through I/O binding. ModelFailed where a node of the
        graph failed on the values it was given."""
        try:
            return self._run(outputs, batch)
        except (Fail, InvalidArgument) as error:
            failed = node_failure(error)
            if failed is None:
                raise
            raise failed from error

    def _run(self, outputs: list[str], batch: Batch) -> list[np.ndarray]:
        if self.bound_device is not None:
            return self.run_bound(outputs, batch, self.bound_device)
        if isinstance(batch, torch.Tensor):
            batch = batch.cpu().numpy()
        with self._lock:
            crowded = self._in_flight > 0 and self.concurrent_runs > 1
            self._in_flight += 1
        try:
            session = self._shared() if crowded else self.session
            return session.run(outputs, {self.input_name: batch})
        finally:
            with self._lock:
                self._in_flight -= 1

    def _shared(self) -> onnxruntime.InferenceSession:
        """The session for runs beside another: made on first need (a copy of the model's weights);
        the main one where the model's file is gone (its version deleted while requests ran)."""
        with self._making_shared:
            if self._shared_session is None:
                try:
                    self._shared_session = _session(self.path, threads=max(1, cpu_count() // self.concurrent_runs))
                except NoSuchFile:
                    self._shared_session = self.session
            return self._shared_session

    def run_bound(self, outputs: list[str], batch: Batch, device: str) -> list[np.ndarray]:
        """With I/O binding: the input copied to `device` once (read where it is, when a tensor
        there already holds it), only `outputs` allocated there and copied back (ORT's plain run
        stages both through its own host buffers)."""
        binding = self.session.io_binding()
        if isinstance(batch, torch.Tensor) and batch.device == self.input_device:
            batch = batch.float().contiguous()  # kept referenced until the run ends
            torch.cuda.current_stream(batch.device).synchronize()  # ORT reads it on a stream of its own
            binding.bind_input(self.input_name, device, self.input_device.index, np.float32, tuple(batch.shape),
                               batch.data_ptr())
        else:
            host = batch.cpu().numpy() if isinstance(batch, torch.Tensor) else batch
            binding.bind_ortvalue_input(self.input_name,
                                        onnxruntime.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(host), device, 0))
        for name in outputs:
            binding.bind_output(name, device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.run(["logits"], batch)[0]

    def run_batches(self, outputs: tuple[str, ...], batches: list[Batch]) -> list[list[np.ndarray]]:
        """`outputs` of several input batches in one session run (or in parts: run_sizes), split
        back per batch."""
        joined = batches[0] if len(batches) == 1 else _joined(batches)
        bounds = np.cumsum([0, *self.run_sizes(len(joined))])
        runs = [self._run_rows(outputs, joined[start:end]) for start, end in zip(bounds, bounds[1:])]
        results = runs[0] if len(runs) == 1 else [np.concatenate(parts) for parts in zip(*runs)]
        ends = np.cumsum([len(batch) for batch in batches])[:-1]
        per_output = [np.split(result, ends) for result in results]
        return [[parts[index] for parts in per_output] for index in range(len(batches))]

    def run_sizes(self, count: int) -> list[int]:
        """The runs `count` images take: parts of at most max_batch; for an uploaded graph, each
        part the largest of its checked batch sizes that fits (1 is one of them), so that no run
        has a size its check did not measure, and no image is padded or run twice."""
        sizes = []
        while count > 0:
            most = min(count, self.max_batch)
            size = most if self.batch_sizes is None else max(s for s in self.batch_sizes if s <= most)
            sizes.append(size)
            count -= size
        return sizes

    def _run_rows(self, outputs: tuple[str, ...], batch: Batch) -> list[np.ndarray]:
        results = self.run(list(outputs), batch)
        for name, result in zip(outputs, results):
            if result.shape[:1] != (len(batch),):  # split, its rows would go to the wrong requests
                raise ModelNotReady(f"the model's {name!r} output has shape {result.shape} for a batch of "
                                    f"{len(batch)} images, not one row per image; it cannot be served")
        return results


def _joined(batches: list[Batch]) -> Batch:
    """One batch of several; on the device of the first tensor among them, if any."""
    tensors = [batch for batch in batches if isinstance(batch, torch.Tensor)]
    if not tensors:
        return np.concatenate(batches)
    device = tensors[0].device
    return torch.cat([batch.to(device) if isinstance(batch, torch.Tensor) else torch.from_numpy(batch).to(device)
                      for batch in batches])


def _session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    # ONNX Runtime's threads spin for a while after each task by default: between runs that burns
    # a core for nothing under a server's uneven load, taken from the decoding of the next requests.
    # Never spinning, they sleep between the graph's nodes too, and each node waits for a wake-up.
    # A spin bounded to SPIN_MICROSECONDS keeps them awake within a run only (bench.ort_spinning).
    # An ONNX Runtime without the bounded spin ignores its key and would spin its default instead.
    bounded = _release(onnxruntime.__version__) >= SPIN_DURATION_SINCE
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if bounded else "0")
    options.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_MICROSECONDS))
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    flush_denormals_in(options)
    return onnxruntime.InferenceSession(str(path), options, providers=onnx_providers())


def _release(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def node_failure(error: Exception) -> ModelFailed | None:
    """ONNX Runtime's error for a node that failed on the values it computed, as ModelFailed;
    None for any other (the machine's failure, an input the service gave wrongly)."""
    found = _NODE_FAILED.search(str(error))
    if found is None or _MACHINE_FAILED.search(found[3]):
        return None
    operator, name, message = found.groups()
    why = (f"the model's {operator} node{f' {name!r}' if name else ''} failed on this input "
           f"({message.strip()[:300]}); the model, not the image, is at fault")
    return ModelFailed(why, why=why)
