"""Bring your own model: one network of each classic CNN family (and one timm model), with random
weights made here, uploaded as safetensors and as ONNX, then predicted and explained.

Weights are random (no hub is reachable). So that they behave like a trained network's, the
BatchNorm statistics are calibrated on the two photos, and the classifier is drawn again with a
scale that spreads the logits over about 10 standard deviations: the top-5 of a faithful
preprocessing then cannot flip on a rounding difference. Inputs are smaller than the
architectures' defaults where the network allows it, to keep the suite fast.
"""

from __future__ import annotations

import copy
import io
import shutil

import numpy as np
import pytest
import timm
import torch
import torchvision
from fastapi.testclient import TestClient
from PIL import Image
from pytorch_grad_cam import GradCAM as ReferenceGradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from safetensors.torch import save
from torchvision import transforms

from core import imaging
from core.explain import METHODS
from core.runtime.devices import fast_layout
from service.app import create_app
from service.settings import Settings
from support import chelsea, coffee, encode, upload

CLASSES = 10
# architecture -> input size used here (Inception v3 needs a 3x3 map at Mixed_7c)
# (VGG's adaptive pooling to 7x7 exports to ONNX only from a 7x7 map: 224)
FAMILIES = {"resnet18": 128, "vgg11_bn": 224, "mobilenet_v3_large": 128, "inception_v3": 160,
            "densenet121": 128, "efficientnet_b0": 128, "convnext_tiny": 128, "timm:resnet18": 128}
CHEAP = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 3}, "rise": {"masks": 64},
         "occlusion": {"window": 32, "stride": 32}}
# Score-CAM at VGG-11's default layer, 512 channels, is 514 forwards of a network that costs 19.7
# of Lite0's at 224: over the explain budget. Its first layer has 64.
OVER_BUDGET_AT_DEFAULT = {"vgg11_bn": {"scorecam": {"layer": "features.0"}}}


def reference_network(architecture: str, size: int, seed: int = 0, **options) -> torch.nn.Module:
    """Built with the libraries themselves, not with Gazer's code; `options` for torchvision's builder."""
    torch.manual_seed(seed)
    if architecture.startswith("timm:"):
        network = timm.create_model(architecture[5:], pretrained=False, num_classes=CLASSES)
    elif architecture in ("inception_v3", "googlenet"):
        network = torchvision.models.get_model(architecture, weights=None, num_classes=CLASSES, aux_logits=False,
                                               init_weights=False, **options)
    else:
        network = torchvision.models.get_model(architecture, weights=None, num_classes=CLASSES, **options)
    photos = torch.cat([reference_preprocessing(size, network)(image)[None] for image in (chelsea(), coffee())])
    photos = torch.cat([photos, photos.flip(-1)])
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average: one batch gives its exact statistics
        network.train()(photos)
        network.eval()
        classifier = [module for module in network.modules() if isinstance(module, torch.nn.Linear)][-1]
        features: list[torch.Tensor] = []
        handle = classifier.register_forward_pre_hook(lambda module, inputs: features.append(inputs[0]))
        network(photos)
        handle.remove()
        weight = torch.randn(classifier.weight.shape, generator=torch.Generator().manual_seed(seed))
        spread = (features[0] @ weight.T).std()
        classifier.weight.copy_(weight * 10.0 / spread)
        classifier.bias.zero_()
    return network


def safetensors_of(network: torch.nn.Module) -> bytes:
    return save({key: value.contiguous() for key, value in network.state_dict().items()})


def onnx_of(network: torch.nn.Module, size: int) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(network, (torch.zeros(1, 3, size, size),), buffer, dynamo=False, opset_version=17,
                      input_names=["pixels"], output_names=["scores"], dynamic_axes={"pixels": {0: "n"}})
    return buffer.getvalue()


# Maps of input gradients cannot be all zero on these networks; CAM-family maps can (the ReLU of a
# sum that is negative everywhere, as Grad-CAM++ gives on ConvNeXt), and so can the
# probability-based ones when the softmax saturates.
NEVER_FLAT = {"saliency", "integrated_gradients", "smoothgrad", "guided_backprop"}
LABELS = "\n".join(f"class {index}" for index in range(CLASSES)).encode()


def reference_preprocessing(size: int, network: torch.nn.Module | None = None) -> transforms.Compose:
    """torchvision's pipeline; for a timm network, timm's own, from its data config (its mean, std,
    interpolation and crop), which an upload that does not say otherwise is served with."""
    if hasattr(network, "pretrained_cfg"):
        return timm.data.create_transform(**timm.data.resolve_data_config({"input_size": (3, size, size)},
                                                                           model=network))
    return transforms.Compose([transforms.Resize(round(size / 0.875)), transforms.CenterCrop(size),
                               transforms.ToTensor(),
                               transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


def reference_log_probabilities(network: torch.nn.Module, image: Image.Image, size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(network(reference_preprocessing(size, network)(image)[None])[0], dim=0)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # max_batch 8: an ONNX upload's check runs its largest batch, and VGG's at 224 would take 2 GB more
    settings = Settings(data_dir=tmp_path_factory.mktemp("own-models"), max_loaded_models=3, max_batch=8)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client
    shutil.rmtree(settings.data_dir)  # the uploaded models: gigabytes of the host's disk otherwise kept to the end


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def uploaded(request, client):
    architecture, size = request.param, FAMILIES[request.param]
    network = reference_network(architecture, size)
    name = architecture.replace(":", "-")
    response = client.post("/v1/models", data={"name": name, "architecture": architecture, "input_size": size},
                           files={"weights": ("model.safetensors", safetensors_of(network)),
                                  "labels": ("labels.txt", LABELS)})
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/v1/models/{name}@{response.json()['version']}"
    return architecture, name, network, size


def test_top5_equals_the_reference_pipeline_torchvisions_or_timms(client, uploaded):
    architecture, name, network, size = uploaded
    images = [chelsea(), coffee()]
    response = client.post(f"/v1/models/{name}/predict", files=[upload(encode(image, "PNG"), "x.png") for image in images])
    assert response.status_code == 200, response.text
    for image, result in zip(images, response.json()["results"]):
        expected = reference_log_probabilities(network, image, size)
        top = torch.argsort(expected, descending=True)
        gaps = expected[top[:5]] - expected[top[1:6]]
        assert gaps.min() > 0.05, f"logits not separated: {gaps}"  # 20x the rounding seen here
        served = result["predictions"]
        assert [p["index"] for p in served] == top[:5].tolist()
        assert served[0]["label"] == f"class {served[0]['index']}"
        # the served probabilities themselves, not only their order
        log_probabilities = np.log([max(p["probability"], 1e-30) for p in served])
        assert np.abs(log_probabilities - expected[top[:5]].numpy()).max() < 0.05


def test_gradcam_at_the_default_layer_agrees_with_pytorch_grad_cam(client, uploaded):
    architecture, name, network, size = uploaded
    model = client.app.state.registry.get(name)
    inputs = torch.from_numpy(imaging.preprocess([chelsea()], model.spec)[0])
    ours = METHODS["gradcam"](model.network, inputs, torch.tensor([3]), model.spec.cam_layer)
    network = fast_layout(copy.deepcopy(network))  # the layout the service runs it in: the same rounding
    layer = network.get_submodule(model.spec.cam_layer)
    with ReferenceGradCAM(model=network, target_layers=[layer]) as reference:
        # pytorch-grad-cam keeps the layer's output tensor itself, and DenseNet's in-place ReLU
        # after `features` would change it; a hook registered after theirs hands the network a copy
        handle = layer.register_forward_hook(lambda module, args, output: output.clone())
        theirs = reference(inputs, [ClassifierOutputTarget(3)])
        handle.remove()
    ours_like_theirs = scale_cam_image(scale_cam_image(ours.maps, (size, size)))
    assert theirs.max() > 0.99 and theirs.std() > 0.01
    assert np.abs(ours_like_theirs - theirs).max() < 1e-4


def test_the_model_describes_itself_and_every_method_returns_a_valid_map(client, uploaded):
    architecture, name, network, size = uploaded
    described = client.get(f"/v1/models/{name}").json()
    assert described["architecture"] == architecture and described["num_classes"] == CLASSES
    assert described["input_size"] == size and described["default_layer"] in described["layers"]
    assert {"gradcam", "saliency", "integrated_gradients", "occlusion", "rise"} <= set(described["methods"])
    assert ("cam" in described["methods"]) == (architecture in {"resnet18", "inception_v3", "efficientnet_b0",
                                                                "timm:resnet18"})
    guided = architecture in {"resnet18", "vgg11_bn", "densenet121", "timm:resnet18"}  # ReLU modules
    assert ("guided_backprop" in described["methods"]) == guided == ("guided_gradcam" in described["methods"])
    if not guided:  # SiLU, GELU, Hardswish, or inception's functional ReLU: nothing to guide
        refused = client.post(f"/v1/models/{name}/explain", files=[upload(encode(chelsea()))],
                              data={"method": "guided_backprop"})
        assert refused.status_code == 422 and "ReLU modules" in refused.json()["detail"], refused.text
    photo = [upload(encode(chelsea()))]
    for method in OVER_BUDGET_AT_DEFAULT.get(architecture, {}):
        refused = client.post(f"/v1/models/{name}/explain", files=photo, data={"method": method})
        assert refused.status_code == 422 and refused.json()["cost"] > refused.json()["budget"], refused.text
    for method in described["methods"]:
        options = {**CHEAP.get(method, {}), **OVER_BUDGET_AT_DEFAULT.get(architecture, {}).get(method, {})}
        response = client.post(f"/v1/models/{name}/explain", files=photo,
                               data={"method": method, "outputs": ["map", "heatmap"], **options})
        assert response.status_code == 200, (method, response.text)
        explanation = response.json()["results"][0]["explanation"]
        raw = np.asarray(explanation["map"])
        assert raw.ndim == 2 and np.isfinite(raw).all() and raw.min() >= 0 and raw.max() <= 1, method
        if method in NEVER_FLAT:
            assert raw.max() > 0.99 and raw.std() > 0, f"{method}: a flat map"


def test_the_same_network_uploaded_as_onnx_gives_the_same_top5(client, uploaded):
    architecture, name, network, size = uploaded
    served_with = client.get(f"/v1/models/{name}").json()["preprocessing"]  # timm's own, for a timm model
    given = {"mean": served_with["mean"], "std": served_with["std"], "interpolation": served_with["interpolation"],
             "resize_size": served_with["resize_short_side_to"]}  # what an ONNX file does not say
    response = client.post("/v1/models", data={"name": f"{name}-onnx", "input_size": size, **given},
                           files={"onnx": ("model.onnx", onnx_of(network, size)), "labels": ("labels.txt", LABELS)})
    assert response.status_code == 201, response.text
    photos = [upload(encode(chelsea()))]
    from_torch = client.post(f"/v1/models/{name}/predict", files=photos).json()["results"]
    from_onnx = client.post(f"/v1/models/{name}-onnx/predict", files=photos).json()["results"]
    assert [p["index"] for p in from_onnx[0]["predictions"]] == [p["index"] for p in from_torch[0]["predictions"]]
    described = client.get(f"/v1/models/{name}-onnx").json()
    assert described["methods"] == ["occlusion", "rise"] and described["architecture"] == "onnx"
    assert described["layer_methods"] == [] and described["layers"] == []
    at_a_layer = client.post(f"/v1/models/{name}-onnx/explain", files=photos, data={"layer": "layer4"})
    assert at_a_layer.status_code == 422 and at_a_layer.json()["detail"].endswith("takes no layer: leave layer out")
    assert described["default_method"] == "occlusion"
    assert client.get(f"/v1/models/{name}").json()["default_method"] == "gradcam"
    refused = client.post(f"/v1/models/{name}-onnx/explain", files=photos, data={"method": "gradcam"})
    assert refused.status_code == 422 and refused.json()["valid"] == ["occlusion", "rise"]
    occluded = client.post(f"/v1/models/{name}-onnx/explain", files=photos,
                           data={"method": "occlusion", "window": 64, "stride": 32})
    assert occluded.status_code == 200, occluded.text
    by_default = client.post(f"/v1/models/{name}-onnx/explain", files=photos, data={"window": 64, "stride": 32})
    assert by_default.status_code == 200, by_default.text  # no method named: one this model answers
    assert by_default.json()["results"][0]["explanation"]["method"] == "occlusion"
    assert client.post(f"/v1/models/{name}/explain", files=photos).json()["results"][0]["explanation"]["method"] \
        == "gradcam"


def test_a_network_with_transform_input_is_served_as_torchvision_runs_it_with_half_mean_and_std(client):
    """torchvision builds GoogLeNet (and Inception v3) with `transform_input=True` when it loads its
    ImageNet weights, so one fine-tuned from them has it, and its state dict does not say so. That
    step turns ImageNet-normalized pixels into pixels normalized by 0.5 and 0.5: uploaded with
    `mean` and `std` 0.5, as the README says, it predicts as torchvision does."""
    size = 128
    network = reference_network("googlenet", size, transform_input=True)
    response = client.post("/v1/models", data={"name": "googlenet-tv", "architecture": "googlenet", "input_size": size,
                                               "mean": "0.5,0.5,0.5", "std": "0.5,0.5,0.5"},
                           files={"weights": ("model.safetensors", safetensors_of(network))})
    assert response.status_code == 201, response.text
    images = [chelsea(), coffee()]
    served = client.post("/v1/models/googlenet-tv/predict", data={"top_k": 3},
                         files=[upload(encode(image, "PNG"), "x.png") for image in images]).json()["results"]
    for image, result in zip(images, served):
        expected = reference_log_probabilities(network, image, size)
        assert [p["index"] for p in result["predictions"]] == torch.argsort(expected, descending=True)[:3].tolist()
        log_probabilities = np.log([max(p["probability"], 1e-30) for p in result["predictions"]])
        assert np.abs(log_probabilities - expected.sort(descending=True).values[:3].numpy()).max() < 0.05


def test_a_timm_model_uploaded_without_preprocessing_is_served_with_timms_own(client):
    """timm's MobileNetV3 ports from TensorFlow are normalized by 0.5: served with ImageNet's mean
    and std, as before, this one gave 0.69 / 0.31 where timm's pipeline gives 0.57 / 0.43."""
    architecture, size = "timm:tf_mobilenetv3_small_minimal_100", 128
    network = reference_network(architecture, size)
    response = client.post("/v1/models", data={"name": "tf-mobilenet", "architecture": architecture,
                                               "input_size": size},
                           files={"weights": ("model.safetensors", safetensors_of(network))})
    assert response.status_code == 201, response.text
    described = client.get("/v1/models/tf-mobilenet").json()["preprocessing"]
    assert described["mean"] == described["std"] == [0.5, 0.5, 0.5]
    assert (described["interpolation"], described["resize_short_side_to"]) == ("bilinear", 146)  # floor(128 / 0.875)
    images = [chelsea(), coffee()]
    served = client.post("/v1/models/tf-mobilenet/predict", data={"top_k": 3},
                         files=[upload(encode(image, "PNG"), "x.png") for image in images]).json()["results"]
    for image, result in zip(images, served):
        expected = reference_log_probabilities(network, image, size).sort(descending=True)
        assert [p["index"] for p in result["predictions"]] == expected.indices[:3].tolist()
        log_probabilities = np.log([max(p["probability"], 1e-30) for p in result["predictions"]])
        assert np.abs(log_probabilities - expected.values[:3].numpy()).max() < 0.05


def test_an_onnx_upload_is_checked_under_a_data_folder_named_from_the_working_folder(tmp_path, monkeypatch):
    """`make run` keeps its data in `var`, GAZER_DATA_DIR's default: the ONNX check's child runs in
    a folder of its own, where the timing reference's relative path named nothing, and every ONNX
    upload was a 500."""
    from tests.api.test_model_refusals import onnx_classifier

    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir="var")
    assert settings.data_dir == tmp_path / "var"
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as client:
        response = client.post("/v1/models", data={"name": "relative", "input_size": 32},
                               files={"onnx": ("m.onnx", onnx_classifier().SerializeToString())})
        assert response.status_code == 201, response.text
