"""PyTriton 0.7 as a peer for bench/load.py: the same ONNX export of EfficientNet-Lite0 and the same
preprocessing as Gazer, on ONNX Runtime CPU inside a Triton Python function, top-5 softmax out.

The server (bench/peers/pytriton_server.py) runs in a venv of its own, var/bench-venvs/pytriton,
made on first use (about 2.5 minutes here), since PyTriton needs numpy < 2 and Gazer runs 2.x.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Iterator

import psutil

MODEL = "efficientnet_lite0"
REPOSITORY = Path(__file__).resolve().parents[2]
VENV = REPOSITORY / "var" / "bench-venvs" / "pytriton"
SERVER_SCRIPT = Path(__file__).with_name("pytriton_server.py")
READY_TIMEOUT = 180.0
AGREEMENT = 1e-4  # |peer - Gazer| top-1 probability


def requirements() -> list[str]:
    """PyTriton, and the very onnxruntime and Pillow that Gazer runs on, so both compute the same numbers
    (and what else core.imaging, which the peer preprocesses with, imports)."""
    return ["nvidia-pytriton==0.7.0", f"onnxruntime=={version('onnxruntime')}", f"pillow=={version('pillow')}",
            "numpy", f"threadpoolctl=={version('threadpoolctl')}"]


def ensure_venv() -> Path:
    """The venv's python, installing it first when missing or made for other requirements."""
    python = VENV / "bin" / "python"
    stamp = VENV / "requirements.txt"
    wanted = "\n".join(requirements()) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    started = time.time()
    print(f"installing PyTriton into {VENV} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements()], check=True)
    stamp.write_text(wanted)
    print(f"installed PyTriton in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    return python


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _model_files(directory: Path) -> tuple[Path, Path]:
    """Gazer's ONNX export of MODEL (made once per bench run) and its spec as JSON."""
    from bench.common import _registry, served_model
    from core.models.onnx_export import onnx_path

    spec = served_model(MODEL).spec
    onnx_file = onnx_path(_registry().storage.onnx_cache, spec)
    spec_file = directory / "spec.json"
    spec_file.write_text(spec.to_json())
    return onnx_file, spec_file


def body_for(photo: bytes) -> tuple[str, bytes, dict[str, str]]:
    """One inference request for `photo`, its bytes sent raw through Triton's binary tensor
    extension (a BYTES element is a 4-byte little-endian length, then the bytes); answers in JSON."""
    tensor = struct.pack("<I", len(photo)) + photo
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tensor)}}],
        "outputs": [{"name": "classes"}, {"name": "probabilities"}],
    }).encode()
    return (f"/v2/models/{MODEL}/infer", header + tensor,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})


def top5(port: int, photo: bytes) -> list[tuple[int, float]]:
    """(class, probability) of the peer's answer for `photo`, best first."""
    path, body, headers = body_for(photo)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"PyTriton answered {response.status}: {payload[:300]!r}")
    outputs = {output["name"]: output["data"] for output in json.loads(payload)["outputs"]}
    return list(zip(outputs["classes"], outputs["probabilities"]))


def check_agreement(port: int, count: int = 3) -> None:
    """The peer's top-1 class and probability match Gazer's pipeline on `count` photos."""
    from bench.common import served_model
    from core import imaging, pipeline
    from support import foolbox_imagenet_photos

    model = served_model(MODEL)
    for path, _ in foolbox_imagenet_photos()[:count]:
        photo = path.read_bytes()
        ours = pipeline.predict(model, [imaging.decode_image(photo, 40_000_000)], top_k=1)[0].predictions[0]
        theirs = top5(port, photo)[0]
        if theirs[0] != ours.index or abs(theirs[1] - ours.probability) > AGREEMENT:
            raise RuntimeError(f"PyTriton disagrees with Gazer on {path.name}: {theirs} vs "
                               f"({ours.index}, {ours.probability})")


def _libpython_path() -> str:
    """LD_LIBRARY_PATH that puts this interpreter's libpython first: Triton's Python backend stub
    links libpython3.11.so.1.0 by name, so on Debian it would load the system's 3.11.2 with the
    venv's stdlib (here pyenv's 3.11.7, whose multiprocessing needs a newer `_thread`), and
    the model fails to load."""
    paths = [sysconfig.get_config_var("LIBDIR")] if sysconfig.get_config_var("Py_ENABLE_SHARED") else []
    return ":".join(paths + [path for path in [os.environ.get("LD_LIBRARY_PATH")] if path])


def _ready(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", f"/v2/models/{MODEL}/ready")
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _stoppable_by_sigint() -> None:
    """In the child before exec: a bench started in the background by a shell ignores SIGINT,
    and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(process: subprocess.Popen) -> None:
    """SIGINT (PyTriton's way to stop tritonserver and its Python backend stubs), then SIGKILL
    for whatever of the tree outlives 30 s."""
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    _, alive = psutil.wait_procs(tree, timeout=5)
    for member in alive:
        member.kill()
    psutil.wait_procs(alive, timeout=5)
    process.wait()


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


@contextmanager
def running(batching: bool) -> Iterator[tuple[int, list[int]]]:
    """PyTriton serving MODEL, without batching or with dynamic batching (max 8, 5 ms delay),
    checked against Gazer's own pipeline; yields its HTTP port and its top process's pid (the
    tritonserver and the backend stubs are its descendants)."""
    python = ensure_venv()
    directory = Path(tempfile.mkdtemp(prefix="gazer-pytriton-"))
    onnx_file, spec_file = _model_files(directory)
    http_port, grpc_port, metrics_port = _free_ports(3)
    # -P: not the script's folder first on sys.path, where this module would shadow the `pytriton` package
    command = [str(python), "-P", str(SERVER_SCRIPT), "--onnx", str(onnx_file), "--spec", str(spec_file),
               "--model-name", MODEL, "--http-port", str(http_port), "--grpc-port", str(grpc_port),
               "--metrics-port", str(metrics_port), "--workspace", str(directory / "workspace"),
               *(["--batching"] if batching else [])]
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "LD_LIBRARY_PATH": _libpython_path()}
    log_path = directory / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, cwd=directory, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=_stoppable_by_sigint)
        try:
            deadline = time.time() + READY_TIMEOUT
            while not _ready(http_port):
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"PyTriton did not become ready; {log_path}:\n{_log_tail(log_path)}")
                time.sleep(0.5)
            check_agreement(http_port)
            yield http_port, [process.pid]
        finally:
            _stop(process)
            shutil.rmtree(directory / "workspace", ignore_errors=True)  # a copy of tritonserver; the log stays
