"""An uploaded ONNX classifier's first runs, in a process of its own: `python -m core.models.onnx_probe
FILE INPUT_SIZE MEMORY_BYTES`. Before it loads the model it caps its own address space at what it
has then plus MEMORY_BYTES, so a graph that allocates without bound (a ConstantOfShape or Expand to
a size written in the file) fails here instead of taking the server's memory; the caller kills it
at its time limit. It prints one JSON line, {"error"} or {"classes", "loaded_bytes",
"run_peak_bytes"}: the resident memory the loaded model added, and the peak that each batch's run
added to it."""

from __future__ import annotations

import json
import resource
import sys

# Logits must have as many rows as the batch has images: both sizes show that a batch
# dimension exists and is kept.
BATCHES = (1, 3)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """From here VmHWM (the peak resident memory) starts again at the current VmRSS (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def probe(path: str, input_size: int) -> dict:
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False  # the peaks then follow what each run allocates
    before = _status_bytes("VmRSS")
    try:
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        return {"error": f"ONNX Runtime cannot load the model: {str(error)[:300]}"}
    loaded = _status_bytes("VmRSS")
    _reset_peak()  # else a peak while loading (weights prepacked) would hide the runs' own
    peaks, classes = [], set()
    for batch in BATCHES:
        example = np.random.default_rng(0).uniform(-1, 1, (batch, 3, input_size, input_size)).astype(np.float32)
        try:
            logits = session.run(["logits"], {session.get_inputs()[0].name: example})[0]
        except Exception as error:
            return {"error": f"ONNX Runtime cannot run the model on a batch of {batch} at {input_size}x{input_size}: "
                             f"{str(error)[:300]}"}
        if logits.ndim != 2 or logits.shape[0] != batch:
            return {"error": f"the first ONNX output must be logits of shape (batch, classes); for a batch of "
                             f"{batch} it is {logits.shape}"}
        if not np.isfinite(logits).all():
            return {"error": "the model's logits are NaN or infinite"}
        classes.add(logits.shape[1])
        peaks.append(_status_bytes("VmHWM") - loaded)
    if len(classes) != 1:
        return {"error": f"the number of classes changes with the batch size: {sorted(classes)} for batches of "
                         f"{BATCHES}"}
    return {"classes": classes.pop(), "loaded_bytes": loaded - before, "run_peak_bytes": peaks}


def main(argv: list[str]) -> None:
    path, input_size, memory_bytes = argv[0], int(argv[1]), int(argv[2])
    import numpy  # noqa: F401  (imported before the cap, like onnxruntime: their own size is not the model's)
    import onnxruntime  # noqa: F401

    limit = _status_bytes("VmSize") + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        answer = probe(path, input_size)
    except MemoryError:
        answer = {"error": "memory"}
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
