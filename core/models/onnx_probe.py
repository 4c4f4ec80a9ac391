"""An uploaded ONNX classifier's first runs, in a process of its own (checking_process):
`main([FILE, INPUT_SIZE, MAX_BATCH, MEMORY_BYTES, REFERENCE, MEAN, STD], receive)`. Before it
loads the model it caps its own address space at what it has then plus MEMORY_BYTES, so a graph
that allocates without bound (a ConstantOfShape or Expand to a size written in the file, or one
that grows faster than the batch) fails here instead of taking the server's memory; the caller
kills it at its time limit. It runs random pixels, normalized by MEAN and STD (comma lists) as
serving normalizes photos, at each batch size of `batches(MAX_BATCH)`, the only sizes serving
then runs (OnnxPredictor.run_sizes), timing each size against the REFERENCE ONNX file
(relative_time), counts the FLOPs of one image and of two (flops.onnx_flops: more per image for
two is refused), and prints one JSON line: {"classes", "flops", "time_ratio"} or {"error"}.
`time_ratio`: the most an image took at any size, over what one of the reference took in a batch
of that size (of at most relative_time.REFERENCE_MAX_BATCH)."""

from __future__ import annotations

import functools
import json
import resource
from typing import Callable

from core.models.flops import COUNTED_BATCHES, onnx_flops
from core.models.relative_time import Reference, seconds_per_run, user_seconds
from core.runtime.denormals import flush_denormals, flush_denormals_in


# How ONNX Runtime and torch word a failed allocation, in the error a check's step raises.
OUT_OF_MEMORY_WORDS = ("bad_alloc", "bad allocation", "Failed to allocate", "Could not allocate",
                       "can't allocate memory", "DefaultCPUAllocator")


def batches(max_batch: int) -> tuple[int, ...]:
    """The batch sizes an uploaded graph is checked at, and the only ones it is then run at
    (OnnxPredictor.run_sizes: 7 images run as 4 + 2 + 1): powers of two below `max_batch`, and
    `max_batch`. A graph could compute its sizes from the batch size and misbehave only at one
    the check skipped. On this CPU the parts cost what one run does (bench.checked_batch_sizes)."""
    return tuple(sorted({2**power for power in range(max_batch.bit_length()) if 2**power < max_batch} | {max_batch}))


def probe(path: str, input_size: int, max_batch: int, reference: Reference, mean: tuple[float, ...],
          std: tuple[float, ...]) -> dict:
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()  # as the server makes it (its CPU memory arena too), on one thread
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: a file's warnings could fill the caller's memory
    flush_denormals_in(options)
    try:
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        return {"error": f"ONNX Runtime cannot load the model: {str(error)[:300]}"}
    classes, time_ratio = set(), 0.0
    for batch in batches(max_batch):
        example = served_values(batch, input_size, mean, std)
        run = functools.partial(session.run, ["logits"], {session.get_inputs()[0].name: example})
        try:
            start = user_seconds()
            logits = run()[0]
            seconds = seconds_per_run(run, user_seconds() - start)
        except Exception as error:
            return {"error": f"ONNX Runtime cannot run the model on a batch of {batch} at {input_size}x{input_size}: "
                             f"{str(error)[:300]}"}
        if not isinstance(logits, np.ndarray) or logits.dtype.kind != "f":
            return {"error": "the first ONNX output must be a tensor of floating-point logits"}
        if logits.ndim != 2 or logits.shape[0] != batch:
            return {"error": f"the first ONNX output must be logits of shape (batch, classes); for a batch of "
                             f"{batch} it is {logits.shape}"}
        if not np.isfinite(logits).all():
            return {"error": "the model's logits are NaN or infinite"}
        if logits.shape[1] > 1 and (logits >= 0).all() and np.allclose(logits.sum(axis=1), 1, atol=1e-4):
            return {"error": "the first ONNX output holds probabilities (each row non-negative, summing to 1), not "
                             "logits: they would be served through softmax again; export the network without its "
                             "final softmax (logits out)"}
        classes.add(logits.shape[1])
        time_ratio = max(time_ratio, seconds / batch / reference.seconds_per_image(batch))
    if len(classes) != 1:
        return {"error": f"the number of classes changes with the batch size: {sorted(classes)} for batches of "
                         f"{batches(max_batch)}"}
    del session  # its memory, before the count's session holds the weights again
    try:
        counts = onnx_flops(path, input_size, COUNTED_BATCHES)
    except Exception as error:
        return {"error": f"cannot count the model's FLOPs: {str(error)[:300]}"}
    # per image, shape arithmetic (the same at every batch size) makes a larger batch's count a little lower
    if counts[1] / COUNTED_BATCHES[1] > 1.01 * counts[0]:
        return {"error": f"the model's FLOPs per image grow with the batch size ({counts[0]:,} for one image, "
                         f"{counts[1]:,} for {COUNTED_BATCHES[1]}): a graph whose cost grows with the batch is not "
                         f"served"}
    return {"classes": classes.pop(), "flops": counts[0], "time_ratio": round(time_ratio, 2)}


def served_values(batch: int, input_size: int, mean: tuple[float, ...], std: tuple[float, ...]):
    """Random pixels, normalized as serving normalizes a photo's: the values a served graph reads.
    On values of another range (-1..1), a graph that tested for a value beyond it (|x| > 1.01, as
    a third of photos' values are under ImageNet's mean and std) ran a slow path only when served."""
    import numpy as np

    pixels = np.random.default_rng(0).uniform(0, 1, (batch, 3, input_size, input_size)).astype(np.float32)
    return (pixels - np.float32(mean)[:, None, None]) / np.float32(std)[:, None, None]


def _address_space_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


def cap_memory(memory_bytes: int) -> None:
    """Caps this process's address space at what it has now plus `memory_bytes` (a MemoryError,
    or a failed allocation, past it), and makes it the first the kernel kills if the machine runs
    out of memory all the same."""
    try:
        with open("/proc/self/oom_score_adj", "w") as oom_score:
            oom_score.write("1000")
    except OSError:  # a sandbox that refuses it: the cap still holds
        pass
    limit = _address_space_bytes() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(argv: list[str], receive: Callable[[], bytes]) -> None:
    """`receive`: unused, the model is FILE."""
    path, input_size, max_batch, memory_bytes = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    mean, std = (tuple(map(float, values.split(","))) for values in argv[5:7])
    flush_denormals()  # as where the model is served
    reference = Reference(argv[4], max_batch)  # before the cap, like numpy and onnxruntime: not the model's

    cap_memory(memory_bytes)
    try:
        answer = probe(path, input_size, max_batch, reference, mean, std)
    except MemoryError:
        answer = {"error": "memory"}
    print(json.dumps(answer), flush=True)
