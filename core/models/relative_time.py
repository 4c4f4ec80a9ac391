"""An uploaded ONNX graph's runs timed against the explain budget's reference, EfficientNet-Lite0
at 224 (flops.REFERENCE_ARCHITECTURE, exported by onnx_export.reference_onnx), in the check's
process, size by size (the reference at each size the first time it is needed): the time ratio
is a floor under the FLOPs ratio (flops.relative_cost). FLOPs count a value for each element-wise
operator, whose time on this CPU can be hundreds of times that (an attacker review measured Mish
at 454x, Relu at 13x, against Lite0's convolutions)."""

from __future__ import annotations

import resource
import time
from typing import Callable

from core.models.flops import REFERENCE_INPUT_SIZE
from core.runtime.denormals import flush_denormals_in

# The reference runs at most this many images at once: its CPU time per image does not grow with
# the batch (8.0-11.7 ms an image from 1 to 32 images on one thread here, with no trend), its
# memory, held from before the check's memory cap, does (340 MB at 32 images).
REFERENCE_MAX_BATCH = 4
TIMING_SECONDS = 0.2


def seconds_per_run(run: Callable[[], object], first: float | None = None) -> float:
    """The user CPU time of one `run` on this thread: `first` (one run's, already timed by
    user_seconds) where it is at least TIMING_SECONDS, else the mean of as many runs as take
    TIMING_SECONDS of CPU time."""
    if first is not None and first >= TIMING_SECONDS:
        return first
    runs, user, cpu = 0, user_seconds(), time.thread_time()
    while runs == 0 or time.thread_time() - cpu < TIMING_SECONDS:
        run()
        runs += 1
    return (user_seconds() - user) / runs


def user_seconds() -> float:
    """The user CPU time of this thread, which runs every node of a session of one thread. Not
    the time on the clock, which the machine's other work moves (a 25 ms run took 46 ms beside
    two busy processes on two cores), nor the system time, which in this VM moved with the
    memory the process held (Lite0 at 320 in batches of 32: 19-52 ms of system time an image
    beside 19-29 of user time, against 2-4 with less memory held)."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_utime


class Reference:
    """The reference's session, on one thread like the check's, its memory arena grown at once to
    REFERENCE_MAX_BATCH images (or `max_batch`), so that its later runs take no new memory."""

    def __init__(self, path: str, max_batch: int) -> None:
        import numpy as np
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        flush_denormals_in(options)
        self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._seconds_per_image: dict[int, float] = {}
        self._largest = min(max_batch, REFERENCE_MAX_BATCH)
        size = REFERENCE_INPUT_SIZE
        self._images = np.random.default_rng(0).uniform(-1, 1, (self._largest, 3, size, size)).astype(np.float32)
        self._run(self._largest)

    def _run(self, batch: int) -> None:
        self._session.run(None, {self._input: self._images[:batch]})

    def seconds_per_image(self, batch: int) -> float:
        """In a batch of `batch` images, or of REFERENCE_MAX_BATCH where that is fewer; timed once."""
        batch = min(batch, self._largest)
        if batch not in self._seconds_per_image:
            self._seconds_per_image[batch] = seconds_per_run(lambda: self._run(batch)) / batch
        return self._seconds_per_image[batch]
