"""On a CUDA machine: the served model runs on the GPU and agrees with the CPU, through each GPU
path (I/O binding, the float16 export, bfloat16 fast_math with channels_last, fine-tuning).
Skipped elsewhere; the ONNX Runtime paths also where onnxruntime has no CUDA provider (the
plain `onnxruntime` package; bench/gpu_machine/run.sh carries onnxruntime-gpu to the lent machine)."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime
import pytest
import torch

from core import device_preprocessing, pipeline
from core.explain import METHODS
from core.imaging import decode_image, needed_sides, preprocess
from core.models.catalog import load_builtin
from core.models.onnx_export import FP16_AGREEMENT_TOLERANCE, ensure_onnx, max_logit_difference
from core.models.registry import ModelRegistry
from core.pipeline import softmax
from core.runtime.devices import fast_layout, fast_math, images_per_pass, onnx_providers, torch_device
from core.runtime.onnx_predictor import OnnxPredictor
from core.storage import Storage
from core.training import data
from core.training.config import Augmentation, FineTuneConfig
from core.training.finetune import fine_tune
from support import chelsea, encode, foolbox_imagenet_photos, shape_image

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")
needs_onnx_cuda = pytest.mark.skipif("CUDAExecutionProvider" not in onnxruntime.get_available_providers(),
                                     reason="onnxruntime here has no CUDA provider (onnxruntime-gpu does)")


@pytest.fixture(scope="module")
def lite0():
    return load_builtin("efficientnet_lite0")


def test_torch_prefers_the_gpu():
    assert torch_device().type == "cuda"


@needs_onnx_cuda
def test_onnx_runtime_prefers_the_gpu():
    assert onnx_providers()[0] == ("CUDAExecutionProvider", {"use_tf32": "0"})


@pytest.mark.parametrize("method", ["gradcam", "saliency", "integrated_gradients"])
def test_gpu_explanations_match_the_cpu(method):
    """In IEEE float32 on both: PyTorch lets cuDNN's convolutions use TF32 unless told otherwise."""
    spec, network = load_builtin("efficientnet_lite0")
    inputs = torch.from_numpy(preprocess([chelsea()], spec)[0])
    options = {"steps": 16} if method == "integrated_gradients" else {}
    on_cpu = METHODS[method](network, inputs, None, spec.cam_layer, **options)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        on_gpu = METHODS[method](network.cuda(), inputs.cuda(), None, spec.cam_layer, **options)
    assert int(on_cpu.targets[0]) == int(on_gpu.targets[0])
    difference = abs(on_cpu.maps - on_gpu.maps)
    assert difference.mean() < 1e-4
    # input gradients scaled by their largest: on an H200 (2026-12-04) one saliency pixel was 0.014 off
    assert difference.max() < (3e-2 if method == "saliency" else 1e-2)


def test_the_registry_serves_the_default_model_on_the_gpu(tmp_path):
    """Loading checks torch's CPU weights against ONNX Runtime (on the GPU, where it has a CUDA
    provider), then serves torch on the GPU; CAM and Grad-CAM use the GPU model's classifier weight
    on ONNX Runtime's feature map."""
    model = ModelRegistry(Storage(tmp_path), max_loaded=1).get("efficientnet_lite0")
    assert model.device.type == "cuda"
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert model.predictor.providers[0] == "CUDAExecutionProvider"
        assert model.predictor.bound_device == "cuda"
    spec, on_cpu = load_builtin("efficientnet_lite0")
    inputs = torch.from_numpy(preprocess([chelsea()], spec)[0])
    for method in ("cam", "gradcam"):  # from ONNX Runtime's feature map with the GPU model's classifier weight
        explained = pipeline.explain(model, [chelsea()], method, outputs=("map",))[0].explanation
        expected = METHODS[method](on_cpu, inputs, None, spec.cam_layer, classifier=spec.classifier_layer)
        assert explained.target.index == int(expected.targets[0])
        assert np.abs(np.asarray(explained.map) - np.asarray(expected.maps[0])).max() < 1e-2


def test_the_registry_serves_the_float16_export_and_bfloat16_when_asked(tmp_path):
    """GAZER_ONNX_FP16: predictions from the float16 export, the same top classes as float32.
    GAZER_CUDA_BFLOAT16: Grad-CAM (below the classifier's layer) through the batcher in bfloat16,
    close to the float32 map."""
    half = ModelRegistry(Storage(tmp_path / "half"), max_loaded=1, onnx_fp16=True, bfloat16=True
                         ).get("efficientnet_lite0")
    full = ModelRegistry(Storage(tmp_path / "full"), max_loaded=1).get("efficientnet_lite0")
    photos = [chelsea()]
    assert [p.index for p in pipeline.predict(half, photos)[0].predictions[:1]] == \
        [p.index for p in pipeline.predict(full, photos)[0].predictions[:1]]
    fast, exact = (np.asarray(pipeline.explain(model, photos, "gradcam", layer="blocks.15", outputs=("map",)
                                               )[0].explanation.map) for model in (half, full))
    assert fast.max() == pytest.approx(1.0, abs=1e-3)
    assert np.abs(fast - exact).max() < 0.05


@needs_onnx_cuda
def test_io_binding_on_the_gpu_agrees_with_the_cpu(lite0, tmp_path):
    spec, network = lite0
    path = ensure_onnx(network, spec, tmp_path)
    on_gpu = OnnxPredictor(path)
    assert on_gpu.bound_device == "cuda"
    assert on_gpu.session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"  # IEEE float32
    batch = preprocess([chelsea()] * 4, spec)[0]
    bound = on_gpu.run(["logits", "features"], batch)
    plain = on_gpu.session.run(["logits", "features"], {on_gpu.input_name: batch})
    for got, expected in zip(bound, plain):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3 * max(1.0, float(np.abs(expected).max())))


@needs_onnx_cuda
def test_the_float16_export_agrees_on_the_gpu_within_its_tolerance(lite0, tmp_path):
    spec, network = lite0
    half = OnnxPredictor(ensure_onnx(network, spec, tmp_path, half=True))
    assert half.providers[0] == "CUDAExecutionProvider"
    difference, largest = max_logit_difference(network, half, spec.input_size)
    assert difference <= FP16_AGREEMENT_TOLERANCE * max(1.0, largest)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_layer_methods_under_fast_math_agree_with_float32(lite0, method):
    spec, network = lite0
    inputs = torch.from_numpy(preprocess([chelsea()], spec)[0])
    exact = METHODS[method](network, inputs, None, spec.cam_layer)
    fast_network = fast_layout(copy.deepcopy(network).cuda())
    with fast_math(CUDA, bfloat16=True):
        fast = METHODS[method](fast_network, fast_layout(inputs.cuda()), None, spec.cam_layer)
    assert int(exact.targets[0]) == int(fast.targets[0])
    assert np.abs(np.asarray(exact.maps, dtype=np.float32) - np.asarray(fast.maps, dtype=np.float32)).max() < 0.05


def test_fine_tuning_on_the_gpu_learns_and_returns_a_savable_cpu_network(lite0, tmp_path):
    """bfloat16 autocast (asked for) and channels_last during training; contiguous CPU weights after it."""
    spec, base = lite0
    rng = np.random.default_rng(0)
    items = []
    for index in range(48):
        kind = ("disc", "square")[index % 2]
        path = tmp_path / f"{kind}-{index}.png"
        shape_image(kind, rng, 96).save(path)
        items.append((path, index % 2))
    config = FineTuneConfig(dataset_id="shapes", output_model="shapes", strategy="fine_tune", epochs=3,
                            batch_size=16, input_size=96, early_stopping_patience=3, bfloat16=True)
    result = fine_tune(config, spec, base, ["disc", "square"], items, lambda *a, **k: None, lambda: False, CUDA,
                       40_000_000)
    assert result.metrics["val_accuracy"] >= 0.7
    assert all(tensor.device.type == "cpu" and tensor.is_contiguous()
               for tensor in result.network.state_dict().values())


def test_augmentation_on_the_gpu_draws_what_the_cpu_draws():
    """The fine-tune loop augments on the device; the same seed gives the same images (to float
    rounding), since the draws come from the CPU generator."""
    squares = torch.randint(0, 256, (8, 3, 80, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    augmentation = Augmentation()
    on_cpu = data.augment_batch(squares, augmentation, 64, torch.Generator().manual_seed(0))
    on_gpu = data.augment_batch(squares.cuda(), augmentation, 64, torch.Generator().manual_seed(0))
    assert on_gpu.device.type == "cuda"
    assert (on_cpu - on_gpu.cpu()).abs().max() < 0.5  # of 0..255: another rotation or zoom moves far more


@pytest.mark.parametrize("method, options, cpu_pass", [
    ("integrated_gradients", {"steps": 100}, {"internal_batch_size": 16}),
    ("smoothgrad", {"samples": 100}, {"internal_batch_size": 16}),
    ("scorecam", {}, {"batch_size": 32}),
])
def test_the_gpus_larger_passes_give_the_maps_of_the_cpus_passes(lite0, method, options, cpu_pass):
    spec, network = lite0
    network = copy.deepcopy(network).cuda()
    inputs = torch.from_numpy(preprocess([chelsea()], spec)[0]).cuda()
    layer = "blocks.15" if method == "scorecam" else None
    assert images_per_pass(inputs, next(iter(cpu_pass.values()))) > next(iter(cpu_pass.values()))
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        larger = METHODS[method](network, inputs, None, layer, **options)
        smaller = METHODS[method](network, inputs, None, layer, **options, **cpu_pass)
    assert np.abs(larger.maps - smaller.maps).max() < 1e-3


def test_decoding_on_the_gpu_agrees_with_the_cpu_path(lite0, tmp_path):
    """nvJPEG's decoding rounds its own way: the input within a level on average, and the same
    predictions, read by ONNX Runtime from the GPU tensor in place where it runs there."""
    spec, network = lite0
    photos = [path.read_bytes() for path, _ in foolbox_imagenet_photos()]
    blobs = photos + [encode(chelsea().resize((300, 451)), quality=90), encode(chelsea().convert("L"))]
    assert device_preprocessing.decodable(blobs, 10**8, 10**9)
    on_gpu = device_preprocessing.preprocess(blobs, spec, "crop", CUDA)
    served, _ = preprocess([decode_image(blob, 10**8, needed_sides(spec)) for blob in blobs], spec)
    assert on_gpu.device.type == "cuda"
    levels = (on_gpu.cpu() - torch.from_numpy(served)).abs() * torch.tensor(spec.std)[:, None, None]
    assert levels.mean() < 1.0, levels.mean()
    predictor = OnnxPredictor(ensure_onnx(network, spec, tmp_path))
    ours = softmax(predictor.run_batches(("logits",), [on_gpu])[0][0])
    theirs = softmax(predictor.run_batches(("logits",), [served])[0][0])
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()
    assert np.abs(ours - theirs).max() < 0.02


def test_damaged_jpegs_are_refused_on_the_gpu_as_pillow_refuses_them(lite0):
    """Where nvJPEG refuses a file the CPU path answers (a 422 where Pillow refuses it too); one
    it decodes where Pillow refuses would be answered 200 instead: none may be."""
    photo, rng = encode(chelsea()), np.random.default_rng(0)
    damaged = [photo[:cut] for cut in (600, len(photo) // 3, len(photo) // 2, len(photo) - 10)]
    for _ in range(20):
        corrupt = np.frombuffer(photo, dtype=np.uint8).copy()
        corrupt[rng.integers(600, len(photo), 8)] = rng.integers(0, 256, 8, dtype=np.uint8)
        damaged.append(corrupt.tobytes())
    for blob in damaged:
        try:
            decode_image(blob, 10**8)
        except Exception:
            pillow_refuses = True
        else:
            pillow_refuses = False
        if pillow_refuses and device_preprocessing.decodable([blob], 10**8, 10**8):
            with pytest.raises(RuntimeError):
                device_preprocessing.preprocess([blob], lite0[0], "crop", CUDA)
