"""An uploaded torch model's build, first runs, ONNX export and agreement check, in a process of
its own (checking_process): `main([MEMORY_BYTES, REQUEST_FILE], receive)`, run in a new version's
staging folder, `receive()` giving the upload's safetensors and REQUEST_FILE its form's fields
(JSON). Before it reads them it caps its own address space at what it has then plus
MEMORY_BYTES, and the caller kills it at its time limit: the largest architectures at 1024 px
took minutes and gigabytes, which the API's own process spent before. It writes the version's
weights and ONNX export into the folder (versions.write_network) and prints one JSON line:
{"spec"}, {"error": {"kind", "detail", "extra"}} (a core.errors class) or {"error": "memory"}."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from core.models.onnx_probe import OUT_OF_MEMORY_WORDS, cap_memory


def check(request: dict, weights: bytes) -> dict:
    from core.errors import GazerError
    from core.models import upload
    from core.models.registry import agreeing_export
    from core.models.versions import write_network

    try:
        preprocessing = upload.Preprocessing(**{field: tuple(value) if isinstance(value, list) else value
                                                for field, value in request["preprocessing"].items()})
        spec, network = upload.torch_model(request["name"], request["architecture"], weights, request["labels"],
                                           preprocessing, request["cam_layer"])
        del weights
        write_network(Path.cwd(), spec, network, agreeing_export(network, spec.input_size))
    except GazerError as error:
        if any(words in error.detail for words in OUT_OF_MEMORY_WORDS):
            return {"error": "memory"}
        return {"error": {"kind": type(error).__name__, "detail": error.detail, "extra": error.extra}}
    return {"spec": json.loads(spec.to_json())}


def main(argv: list[str], receive: Callable[[], bytes]) -> None:
    memory_bytes, request = int(argv[0]), json.loads(Path(argv[1]).read_text())
    import torch  # noqa: F401  (imported before the cap, with what checking uses: their own size is not the model's)
    import torchvision  # noqa: F401
    import onnxruntime  # noqa: F401
    import core.models.registry  # noqa: F401

    cap_memory(memory_bytes)
    try:
        answer = check(request, receive())
    except MemoryError:
        answer = {"error": "memory"}
    print(json.dumps(answer), flush=True)
