"""PyTriton serving a Gazer ONNX export with Gazer's own preprocessing: JPEG bytes in, top-5 softmax out.

Run by the Python of PyTriton's venv (bench/peers/pytriton.py starts it), with PYTHONPATH at the
repository so that `core.imaging` (which needs no torch) does the decoding and preprocessing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from core.imaging import decode_image, preprocess
from core.models.spec import ModelSpec

TOP_K = 5
MAX_PIXELS = 40_000_000  # Gazer's default max_image_pixels


def softmax(logits: np.ndarray) -> np.ndarray:  # as core.pipeline.softmax, which imports torch
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def classifier(onnx_file: Path, spec: ModelSpec):
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        # image: [batch, 1] of JPEG bytes
        pictures = [decode_image(bytes(row[0]), MAX_PIXELS) for row in image]
        pixels, _ = preprocess(pictures, spec)
        probabilities = softmax(session.run(["logits"], {input_name: pixels})[0])
        classes = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
        return {"classes": classes.astype(np.int64),
                "probabilities": np.take_along_axis(probabilities, classes, axis=1).astype(np.float32)}

    return infer


def model_config(batching: bool) -> ModelConfig:
    if batching:
        return ModelConfig(max_batch_size=8, batcher=DynamicBatcher(max_queue_delay_microseconds=5000))
    return ModelConfig(batching=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--spec", type=Path, required=True, help="the model's ModelSpec as JSON")
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--workspace", type=Path, required=True, help="for Triton's model store and sockets")
    parser.add_argument("--batching", action="store_true", help="dynamic batching: max 8, 5 ms queue delay")
    args = parser.parse_args()
    spec = ModelSpec.from_json(args.spec.read_text())
    # Requests carry shape [1, 1] either way: with batching the first axis is Triton's batch axis.
    shape = (1,) if args.batching else (1, 1)
    out_shape = (TOP_K,) if args.batching else (1, TOP_K)
    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
                          grpc_port=args.grpc_port, metrics_port=args.metrics_port, allow_gpu_metrics=False)
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(model_name=args.model_name, infer_func=classifier(args.onnx, spec),
                    inputs=[Tensor(name="image", dtype=np.bytes_, shape=shape)],
                    outputs=[Tensor(name="classes", dtype=np.int64, shape=out_shape),
                             Tensor(name="probabilities", dtype=np.float32, shape=out_shape)],
                    config=model_config(args.batching), strict=True)
        triton.serve()


if __name__ == "__main__":
    main()
