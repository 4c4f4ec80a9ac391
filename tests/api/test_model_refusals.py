"""What an upload may not do: pickles (never opened), ONNX external data and custom operators,
ONNX graphs whose memory or time is out of bounds, NaN models, label-count mismatches, names that
leave the models folder, built-in names."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
import torchvision
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from safetensors.torch import save

from core.dataset_explain.runner import explain_dataset, explain_dataset_config
from core.datasets import ArchiveLimits, ingest_archive
from core.errors import InvalidRequest
from core.models import checking_process, onnx_upload, upload as model_upload
from core.models.flops import REFERENCE_FLOPS, relative_cost
from core.models.registry import ModelRegistry
from core.models.spec import ModelSpec
from core import pipeline
from core.pipeline import MAX_MAP_VALUES
from service.app import create_app
from service.settings import Settings
from support import chelsea, encode, shapes_archive, upload


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=tmp_path_factory.mktemp("refusals"))),
                    raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def small_resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=4).eval()


def weights_of(network) -> bytes:
    return save({key: value.contiguous() for key, value in network.state_dict().items()})


def post_weights(client, blob: bytes, name: str = "mine", **fields):
    return client.post("/v1/models", data={"name": name, "architecture": "resnet18", "input_size": 64, **fields},
                       files={"weights": ("weights.bin", blob)})


def assert_refused(response, status: int, field: str, words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["errors"][0]["field"] == field and words in body["detail"], body
    return body


class CreatesAFile:
    """Unpickling this would create a file: the upload must not unpickle anything."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_that_would_create_a_file_is_refused_unopened(client, tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"fc.weight": CreatesAFile(str(marker))}, protocol=4)
    assert_refused(post_weights(client, blob), 422, "weights", "safetensors")
    assert not marker.exists()


def test_torch_save_files_are_refused_unopened(client, small_resnet, tmp_path):
    marker = tmp_path / "pwned-zip"
    buffer = io.BytesIO()
    torch.save({"state": small_resnet.state_dict(), "trap": CreatesAFile(str(marker))}, buffer)
    assert_refused(post_weights(client, buffer.getvalue()), 422, "weights", "safetensors")
    legacy = io.BytesIO()
    torch.save(small_resnet.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert_refused(post_weights(client, legacy.getvalue()), 422, "weights", "safetensors")
    assert not marker.exists()


@pytest.mark.parametrize("other", ["mobilenet_v2", "resnet34", "resnet50"])
def test_weights_of_another_architecture_are_422(client, other):
    weights = weights_of(torchvision.models.get_model(other, num_classes=4))
    assert_refused(post_weights(client, weights), 422, "weights", "resnet18")


@pytest.mark.parametrize("limit, words", [({"weights_check_seconds": 0.5}, "took longer than 0.5 s"),
                                          ({"weights_check_memory_bytes": 64 * 2**20}, "needed more than 64 MiB")])
def test_a_weights_upload_is_checked_in_a_process_capped_in_time_and_memory(tmp_path, small_resnet, limit, words):
    """Its build, first runs, export and agreement ran in the API's own process, without a time cap:
    ConvNeXt-Large at 1024 px took 4 minutes and about 9 GB there. The check's process is killed
    at its limit, the answer is a 422 naming the setting, and nothing of the version is left."""
    settings = Settings(data_dir=tmp_path, **limit)
    checking_process.start_server()  # the time limit counts from the check's start, not the server's
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as capped:
        started = time.perf_counter()
        response = post_weights(capped, weights_of(small_resnet), name="capped")
        answered_after = time.perf_counter() - started
        detail = assert_refused(response, 422, "weights", words)["detail"]
        assert f"GAZER_{next(iter(limit)).upper()}" in detail
        assert answered_after < 10, answered_after
        assert capped.get("/v1/models/capped").status_code == 404
        assert list((tmp_path / "models" / "capped").iterdir()) == []  # no staging folder left
    uncapped = Settings(data_dir=tmp_path)  # the same upload is served: it is the cap that decides
    with TestClient(base_url="http://localhost", app=create_app(uncapped), raise_server_exceptions=False) as client:
        assert post_weights(client, weights_of(small_resnet), name="capped").status_code == 201


def test_a_model_with_nan_logits_is_422(client, small_resnet):
    state = {key: value.clone() for key, value in small_resnet.state_dict().items()}
    state["fc.bias"][0] = float("nan")
    assert_refused(post_weights(client, save(state)), 422, "weights", "NaN")
    assert client.get("/v1/models/mine").status_code == 404  # nothing was published


@pytest.mark.parametrize("key, tensor, words", [
    ("fc.bias", torch.zeros(7), "fc.bias"),           # 4 rows of weights, 7 biases
    ("fc.weight", torch.zeros(4, 7), "fc.weight"),    # 7 features in, where resnet18 pools 512
    ("fc.weight", torch.zeros(0, 512), "0 classes; a served model has 2 to"),
    ("fc.weight", torch.zeros(1, 512), "1 output, whose softmax is always 1"),  # every image was 100% class 0
    ("layer1.0.conv1.weight", torch.zeros(64, 64, 3, 3, dtype=torch.complex64), "layer1.0.conv1.weight complex64"),
    ("layer1.0.conv1.weight", torch.ones(64, 64, 3, 3, dtype=torch.uint16), "layer1.0.conv1.weight uint16"),
    ("bn1.weight", torch.ones(64, dtype=torch.bool), "bn1.weight bool"),
])
def test_classifier_rows_that_do_not_fit_and_weights_not_floating_point_are_422_on_the_weights(
        client, small_resnet, key, tensor, words):
    """They once read as a problem of input_size, or passed cast to floats: the imaginary part
    dropped, integers and booleans taken for weights."""
    state = {name: value.clone() for name, value in small_resnet.state_dict().items()}
    state[key] = tensor
    if key == "fc.weight" and len(tensor) < 2:
        state["fc.bias"] = torch.zeros(len(tensor))
    assert_refused(post_weights(client, save(state)), 422, "weights", words)


def test_weights_without_batchnorms_step_counts_are_served(client, small_resnet):
    """torch's strict loading takes them (evaluation never reads the counts): they were a 422."""
    state = {key: value.contiguous() for key, value in small_resnet.state_dict().items()
             if not key.endswith(".num_batches_tracked")}
    torchvision.models.resnet18(num_classes=4).load_state_dict(state, strict=True)
    served = post_weights(client, save(state), name="no-step-counts")
    assert served.status_code == 201, served.text
    answer = client.post("/v1/models/no-step-counts/predict", files=[upload(encode(chelsea()))])
    assert answer.status_code == 200, answer.text


def test_weights_of_a_dtype_torch_lacks_are_422(client):
    """safetensors names float8 e8m0, float4 and float6 dtypes that torch cannot make: a 500 (KeyError)."""
    for dtype, size in (("F8_E8M0", 2048), ("F4", 1024), ("F6_E2M3", 1536)):  # 4 x 512 values
        header = json.dumps({"fc.weight": {"dtype": dtype, "shape": [4, 512], "data_offsets": [0, size]}}).encode()
        blob = len(header).to_bytes(8, "little") + header + bytes(size)
        assert_refused(post_weights(client, blob), 422, "weights", f"a dtype torch cannot load: '{dtype}'")


def test_an_onnx_file_sent_as_weights_is_422_pointing_at_the_onnx_field(client, tmp_path):
    """Its first 8 bytes read as a header length reached past the file, whose braces were then
    counted as tensors: "the weights hold over 20000 tensors" for any such file over about 5 MB."""
    exported = tmp_path / "model.onnx"
    torch.onnx.export(torchvision.models.resnet18(num_classes=4).eval(), (torch.zeros(1, 3, 64, 64),), str(exported),
                      dynamo=False)
    assert_refused(post_weights(client, exported.read_bytes()), 422, "weights",
                   "weights are not a .safetensors file (an 8-byte header length, then a JSON header); an ONNX file "
                   "goes in the onnx field")


def test_half_precision_weights_are_served(client, small_resnet):
    """Float16 and bfloat16 are how weights are often kept; the batch norms' counters stay integers."""
    for dtype in (torch.float16, torch.bfloat16):
        state = {key: value.to(dtype) if value.is_floating_point() else value
                 for key, value in small_resnet.state_dict().items()}
        served = post_weights(client, save(state), name=f"half-{str(dtype).removeprefix('torch.')}")
        assert served.status_code == 201, served.text


def test_a_label_count_that_differs_from_the_classifier_is_422(client, small_resnet):
    response = client.post("/v1/models", data={"name": "mine", "architecture": "resnet18", "input_size": 64},
                           files={"weights": ("w.safetensors", weights_of(small_resnet)),
                                  "labels": ("labels.txt", b"cat\ndog\n")})
    assert_refused(response, 422, "labels", "4 classes")


def test_a_label_over_256_characters_is_422(client, small_resnet):
    """One label had no limit but the file's 4 MiB: 4000-character names made a 6 KB predict
    request a 260 MB answer."""
    def with_labels(last: str):
        return client.post("/v1/models", data={"name": "long-names", "architecture": "resnet18", "input_size": 64},
                           files={"weights": ("w.safetensors", weights_of(small_resnet)),
                                  "labels": ("labels.txt", f"cat\ndog\nfox\n{last}\n".encode())})
    assert_refused(with_labels("b" * 257), 422, "labels", "labels line 4 is 257 characters long; a class name has "
                                                          "at most 256")
    assert with_labels("  " + "b" * 256 + "  ").status_code == 201  # stripped, as it is kept


@pytest.mark.parametrize("label, shown", [("\x1b]0;PWNED\x07cat", "'\\x1b'"), ("red\x1b[31m", "'\\x1b'"),
                                          ("\u202egpj.exe", "'\\u202e'"), ("a\u200fb", "'\\u200f'"),
                                          # split off as a line of their own before, shifting the names after
                                          ("cat\u2028dog", "'\\u2028'"), ("cat\x85dog", "'\\x85'"),
                                          ("cat\x1edog", "'\\x1e'")])
def test_labels_with_control_or_direction_characters_are_422(client, small_resnet, label, shown):
    """An admin's labels reached other keys' terminals through the CLI (a window title set, the
    screen cleared) and could turn what a page shows around."""
    labels = f"cat\ndog\n{label}\nbird\n".encode()
    response = client.post("/v1/models", data={"name": "mine", "architecture": "resnet18", "input_size": 64},
                           files={"weights": ("w.safetensors", weights_of(small_resnet)),
                                  "labels": ("labels.txt", labels)})
    assert_refused(response, 422, "labels", f"line 3 holds {shown}")


def test_an_empty_label_line_is_422_and_repeated_names_are_kept(client, small_resnet):
    """A blank line between names made a class named "" (accepted). Names may repeat: ImageNet
    has two cranes, the bird and the machine."""
    upload_with = lambda labels: client.post(  # noqa: E731
        "/v1/models", data={"name": "labelled", "architecture": "resnet18", "input_size": 64},
        files={"weights": ("w.safetensors", weights_of(small_resnet)), "labels": ("labels.txt", labels)})
    assert_refused(upload_with(b"cat\n\ndog\nbird\n"), 422, "labels", "line 2 is empty")
    assert upload_with(b"crane\ndog\ncrane\nbird\n\n").status_code == 201  # trailing blank lines are no class
    for ends in (b"\r\n", b"\r"):  # Windows' and old Macs' line ends
        assert upload_with(ends.join([b"cat", b"dog", b"fox", b"bird", b""])).status_code == 201
    assert client.get("/v1/models/labelled").json()["labels"] == ["cat", "dog", "fox", "bird"]


def test_unknown_architectures_and_bad_preprocessing_are_422(client, small_resnet):
    assert_refused(client.post("/v1/models", data={"name": "mine", "architecture": "resnet9000"},
                               files={"weights": ("w", weights_of(small_resnet))}), 422, "architecture", "unknown")
    # timm takes any tag as a model's name, then refused to build it: a 500
    for tag in ("no_such_tag", "*", "a?_in1k"):  # not read as a pattern: "*" matched every tag
        assert_refused(client.post("/v1/models", data={"name": "mine", "architecture": f"timm:resnet18.{tag}"},
                                   files={"weights": ("w", weights_of(small_resnet))}), 422, "architecture",
                       f"timm's resnet18 has no tag '{tag}': leave the tag out, or use one of a1_in1k")
    assert model_upload.check_architecture("timm:convnext_atto_rms.untrained")  # a tag with no weights is one
    squeezenet = client.post("/v1/models", data={"name": "mine", "architecture": "squeezenet1_0"},
                             files={"weights": ("w", weights_of(torchvision.models.squeezenet1_0(num_classes=4)))})
    assert_refused(squeezenet, 422, "architecture", "no linear classifier")
    assert_refused(post_weights(client, weights_of(small_resnet), mean=[0.5, 0.5]), 422, "mean",
                   "mean takes 3 numbers, one per channel (RGB), comma-separated (0.5,0.5,0.5) or the field repeated")
    assert_refused(post_weights(client, weights_of(small_resnet), std=[58.4, 57.1, 57.4]), 422, "std",
                   "for pixels in 0..255, divide by 255")
    bracketed = post_weights(client, weights_of(small_resnet), mean="[0.5,0.5,0.5]")  # JSON's list
    assert bracketed.status_code == 422 and "not '[0.5'" in bracketed.json()["detail"], bracketed.text
    assert_refused(post_weights(client, weights_of(small_resnet), interpolation="lanczos"), 422, "interpolation",
                   "bilinear")
    assert_refused(post_weights(client, weights_of(small_resnet), cam_layer="fc"), 422, "cam_layer", "feature map")


def test_mean_and_std_read_back_as_they_were_given(client, small_resnet):
    """On the 0..1 scale of an upload, the field repeated or as a comma list."""
    served = post_weights(client, weights_of(small_resnet), name="scaled", mean="0.5, 0.4,0.3", std=[0.2, 0.25, 0.3])
    assert served.status_code == 201, served.text
    preprocessing = client.get("/v1/models/scaled").json()["preprocessing"]
    assert preprocessing["mean"] == [0.5, 0.4, 0.3] and preprocessing["std"] == [0.2, 0.25, 0.3]


def test_a_layer_of_a_1x1_map_is_not_offered_to_explain(client, small_resnet):
    """A global pool's map has one position: every explanation of it was a blank map."""
    refused = assert_refused(post_weights(client, weights_of(small_resnet), cam_layer="avgpool"), 422, "cam_layer",
                             "larger than 1 x 1")
    assert "layer4" in refused["valid"] and "avgpool" not in refused["valid"]
    served = post_weights(client, weights_of(small_resnet), name="pooled")
    assert served.status_code == 201, served.text
    layers = client.get("/v1/models/pooled").json()["layers"]
    assert "layer4" in layers and "avgpool" not in layers
    explained = client.post("/v1/models/pooled/explain", files=[upload(encode(chelsea()))],
                            data={"method": "gradcam", "layer": "avgpool"})
    assert_refused(explained, 422, "layer", "no targetable layer 'avgpool'")


def test_vision_transformers_are_422_saying_so(client):
    """torchvision's by name; timm's (many names) once built: they have no feature map to explain."""
    assert_refused(client.post("/v1/models", data={"name": "mine", "architecture": "vit_b_16"},
                               files={"weights": ("w", b"unread")}), 422, "architecture", "vision transformer")
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, pretrained=False)
    refused = client.post("/v1/models", data={"name": "mine", "architecture": "timm:vit_tiny_patch16_224"},
                          files={"weights": ("w", weights_of(vit))})
    assert_refused(refused, 422, "architecture", "vision transformers and other networks without one")


def test_a_map_with_nothing_to_point_at_says_it_is_flat(client):
    """A model whose classes all score the same (one weight for all): no occluded patch changes
    a probability, so its map is all zeros, and says so; a real model's map peaks at 1. A flat
    map ranks no pixel first, so it has no faithfulness scores (they had measured raster order)."""
    served = client.post("/v1/models", data={"name": "averaging", "input_size": 32},
                         files={"onnx": ("m.onnx", onnx_classifier().SerializeToString())})
    assert served.status_code == 201, served.text
    explained = {}
    for model in ("averaging", "efficientnet_lite0"):
        answer = client.post(f"/v1/models/{model}/explain", files=[upload(encode(chelsea()))],
                             data={"method": "occlusion", "window": 32, "stride": 32, "outputs": "map",
                                   "faithfulness": "true"})
        assert answer.status_code == 200, answer.text
        explained[model] = answer.json()["results"][0]["explanation"]
    assert explained["averaging"]["flat"] is True and np.asarray(explained["averaging"]["map"]).max() == 0
    assert explained["efficientnet_lite0"]["flat"] is False
    assert np.asarray(explained["efficientnet_lite0"]["map"]).max() == 1
    assert explained["averaging"]["faithfulness"] is None
    assert 0 <= explained["efficientnet_lite0"]["faithfulness"]["deletion"] <= 1


def test_timm_weights_under_a_torchvision_name_are_told_the_prefix(client, small_resnet):
    network = timm.create_model("efficientnet_b0", num_classes=3, pretrained=False)
    refused = client.post("/v1/models", data={"name": "mine", "architecture": "efficientnet_b0"},
                          files={"weights": ("w", weights_of(network))})
    assert_refused(refused, 422, "weights", "timm's weights? architecture=timm:efficientnet_b0")
    # torchvision's resnet18 weights under resnet50 (a timm name too) are not timm's
    wrong = assert_refused(post_weights(client, weights_of(small_resnet), architecture="resnet50"), 422, "weights",
                           "do not fit resnet50")
    assert "timm" not in wrong["detail"]
    # resnet18's names are timm's too: a wrong shape under them is no sign of timm's weights
    state = {key: value.contiguous() for key, value in small_resnet.state_dict().items()}
    state["conv1.weight"] = state["conv1.weight"].reshape(32, 6, 7, 7).contiguous()
    reshaped = assert_refused(post_weights(client, save(state)), 422, "weights",
                              "other shapes [conv1.weight (32, 6, 7, 7) where resnet18 has (64, 3, 7, 7)]")
    assert "timm" not in reshaped["detail"]


@pytest.mark.parametrize("prefix", ["module.", "model."])
def test_weights_whose_every_name_has_a_prefix_are_told_it(client, small_resnet, prefix):
    """DataParallel's state dict names every tensor `module.NAME`, a Lightning module's `model.NAME`."""
    state = {prefix + key: value.contiguous() for key, value in small_resnet.state_dict().items()}
    assert_refused(post_weights(client, save(state)), 422, "weights",
                   f"every name starts with {prefix!r}: save the network's own state dict")


def onnx_classifier(external_data: bool = False, domain: str = "", side: int = 32, classes: int = 4,
                    declared_classes: int | str | None = None) -> onnx.ModelProto:
    """`declared_classes`: the output's class dimension as the graph declares it (a name: not declared)."""
    weight = numpy_helper.from_array(np.ones((classes, 3), dtype=np.float32), "weight")
    nodes = [helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "weight"], ["scores"], transB=1)]
    if domain:
        nodes.append(helper.make_node("Mystery", ["scores"], ["extra"], domain=domain))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                              ["n", 3, side, side])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT,
                                                              ["n", declared_classes or classes])],
                              initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external_data:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        entry = weight.external_data.add()
        entry.key, entry.value = "location", "../../../../etc/passwd"
        model.graph.initializer[0].CopyFrom(weight)
    return model


def ending_in(op_types: list[str]) -> onnx.ModelProto:
    """onnx_classifier with `op_types` applied to its scores, in turn; `Exp/Sum/Div` is a softmax
    written out by hand."""
    model = onnx_classifier()
    before = model.graph.output[0].name
    for index, op_type in enumerate(op_types):
        out, options = f"out{index}", {"axis": 1} if "Softmax" in op_type else {"to": TensorProto.FLOAT} \
            if op_type == "Cast" else {}
        if op_type == "Exp/Sum/Div":
            model.graph.node.extend([
                helper.make_node("Exp", [before], [f"exp{index}"]),
                helper.make_node("ReduceSum", [f"exp{index}", "axes"], [f"sum{index}"], keepdims=1),
                helper.make_node("Div", [f"exp{index}", f"sum{index}"], [out])])
            model.graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"))
        else:
            model.graph.node.append(helper.make_node(op_type, [before], [out], name=f"{op_type.lower()}{index}",
                                                     **options))
        before = out
    model.graph.output[0].name = before
    return model


def test_an_onnx_graph_that_ends_in_softmax_is_refused_as_it_returns_probabilities(client):
    """Its probabilities were served as logits, through softmax again: 0.40 / 0.30 / 0.30 where
    the same weights gave 0.53 / 0.25 / 0.23, and no word of it (a sigmoid's 0.33 served as 0.23)."""
    for ending, said in ((["Softmax"], "comes from a Softmax node ('softmax0'): probabilities"),
                         (["Softmax", "Identity", "Flatten"], "comes from a Softmax node ('softmax0'): probabilities"),
                         (["Sigmoid"], "comes from a Sigmoid node ('sigmoid0'): probabilities"),
                         (["HardSigmoid", "Flatten"], "comes from a HardSigmoid node ('hardsigmoid0'): probabilities"),
                         (["Softmax", "Cast", "Transpose", "Transpose"], "holds probabilities (each row non-negative"),
                         (["Exp/Sum/Div"], "holds probabilities (each row non-negative")):
        refused = client.post("/v1/models", data={"name": "probabilities", "input_size": 32},
                              files={"onnx": ("m.onnx", ending_in(ending).SerializeToString())})
        assert_refused(refused, 422, "onnx", said)
    served = client.post("/v1/models", data={"name": "log-probabilities", "input_size": 32},
                         files={"onnx": ("m.onnx", ending_in(["LogSoftmax"]).SerializeToString())})
    assert served.status_code == 201, served.text


def test_an_onnx_graph_of_another_input_type_than_float32_is_refused(client):
    """A float16 export was refused by ONNX Runtime's own words ("Unexpected input data type")."""
    model = onnx_classifier()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    refused = client.post("/v1/models", data={"name": "half", "input_size": 32},
                          files={"onnx": ("m.onnx", model.SerializeToString())})
    assert_refused(refused, 422, "onnx", "the ONNX input is FLOAT16; the service feeds FLOAT (float32)")


@pytest.fixture(scope="module")
def wide_onnx(client):
    """A tiny ONNX classifier at 1024 x 1024: four of its maps fit in one answer."""
    response = client.post("/v1/models", data={"name": "wide-onnx", "input_size": 1024},
                           files={"onnx": ("m.onnx", onnx_classifier(side=1024).SerializeToString())})
    assert response.status_code == 201, response.text
    return "wide-onnx"


def test_raw_maps_are_bounded_per_request(client, wide_onnx):
    """outputs=map returns each map at the input's resolution: at 1024 x 1024, five are over the budget."""
    photos = [upload(encode(chelsea()))] * 5
    cheap = {"window": 224, "stride": 224}  # a few dozen occluded inputs per image: under the compute budget
    refused = client.post("/v1/models/wide-onnx/explain", files=photos, data={"outputs": "map", **cheap})
    assert refused.status_code == 422, refused.text
    assert f"outputs=map would return 5242880 values (5 maps of 1048576 each); a request returns at most " \
        f"{MAX_MAP_VALUES}" in refused.json()["detail"]
    small = client.post("/v1/models/wide-onnx/explain", files=photos[:1],
                        data={"outputs": "heatmap,map", **cheap})
    assert small.status_code == 200, small.text
    assert np.asarray(small.json()["results"][0]["explanation"]["map"]).shape == (1024, 1024)


def test_raw_maps_at_a_layer_are_bounded_by_the_layers_resolution(client):
    """A layer method's maps were not bounded: a layer's map can be larger than the input (Lite0's stem
    padding: 225 x 225 at 224), and 64 maps of an uploaded network's first layer at 1024 px made a
    228 MB answer of 16.8 million values."""
    lite0 = client.app.state.registry.get("efficientnet_lite0")
    assert pipeline.map_positions(lite0, "gradcam", "stem.0.static_padding") == 225 * 225
    assert pipeline.most_raw_maps(lite0, "gradcam", "stem.0.static_padding") == MAX_MAP_VALUES // 225**2 == 85
    assert pipeline.map_positions(lite0, "gradcam", None) == 7 * 7  # at its CAM layer, `head`
    assert pipeline.map_positions(lite0, "cam", None) == 7 * 7
    assert pipeline.map_positions(lite0, "saliency", None) == 224 * 224
    assert pipeline.map_positions(lite0, "guided_gradcam", None) == 224 * 224  # Grad-CAM's map times the pixels'
    with pytest.raises(InvalidRequest, match=r"would return 4353750 values \(86 maps of 50625 each\)"):
        pipeline.explain_cost(lite0, "gradcam", "stem.0.static_padding", None, 86, outputs=("map",))


def test_an_input_size_where_the_last_feature_map_is_one_position_is_named(client):
    """It was blamed on the architecture ("vision transformers ... are not supported") at upload, and
    a fine-tune at that size was queued, then failed on the worker with the same words."""
    torch.manual_seed(0)
    weights = weights_of(torchvision.models.mobilenet_v3_small(num_classes=4).eval())
    upload_at = lambda size: client.post(  # noqa: E731
        "/v1/models", data={"name": "mobile", "architecture": "mobilenet_v3_small", "input_size": size},
        files={"weights": ("w.safetensors", weights)})
    assert_refused(upload_at(32), 422, "input_size", "at input_size 32 MobileNetV3's feature maps shrink to 1 x 1")
    assert upload_at(64).status_code == 201
    limits = ArchiveLimits(max_files=10, max_total_bytes=10**7, max_image_pixels=10**7)
    dataset = ingest_archive(shapes_archive(per_class=2), client.app.state.registry.storage.datasets, None, limits)
    fine_tune = client.post("/v1/jobs/fine-tune", json={"base_model": "mobile", "dataset_id": dataset["id"],
                                                        "output_model": "mobile-32", "input_size": 32})
    assert_refused(fine_tune, 422, "input_size", "feature maps shrink to 1 x 1")


def explain_shapes(client, model: str, batch_size: int, folder, progress) -> dict:
    """An explain-dataset job's work, run here: 3 classes of 2 shapes each, by occlusion in one window."""
    registry = client.app.state.registry
    limits = ArchiveLimits(max_files=10, max_total_bytes=10**7, max_image_pixels=10**7)
    dataset = ingest_archive(shapes_archive(per_class=2), registry.storage.datasets, None, limits)
    config = explain_dataset_config({"dataset_id": dataset["id"], "model": model, "method": "occlusion",
                                     "options": {"window": 224, "stride": 224}, "batch_size": batch_size})
    return explain_dataset(config, registry.get(model), registry.storage.datasets, folder, lambda name: name, 10**7,
                           progress, lambda: False)


def test_a_data_sets_explanation_takes_as_many_images_a_batch_as_their_maps_fit(client, wide_onnx, tmp_path):
    """An explain-dataset job asks for each image's raw map (its class's mean map is made of them):
    Inception v3 at 299 px with saliency at batch_size 64 was queued, then failed at its first batch
    ("outputs=map would return 4380649 values"). A batch holds as many as one answer's maps may."""
    started = []
    result = explain_shapes(client, wide_onnx, 8, tmp_path,
                            lambda fraction, **details: started.append(details["images"]))
    assert result["explained"] == 6 and result["failed"] == 0
    assert started == [0, 4, 6]  # MAX_MAP_VALUES // 1024**2 = 4 a batch, where 8 were asked for


def test_a_data_sets_class_mean_maps_are_written_as_the_batches_pass_each_class(client, wide_onnx, tmp_path):
    """The sum of a class's maps was kept for every class to the job's end: 1000 classes of 224 x
    224 saliency maps held 400 MB. Items come class by class, so each class is done, and its sum
    let go, once the batches have passed it."""
    written_before_batch = []

    def progress(fraction, **details):
        written_before_batch.append(sorted(path.name for path in tmp_path.glob("class-*-mean.png")))

    result = explain_shapes(client, wide_onnx, 2, tmp_path, progress)
    assert written_before_batch == [[], ["class-0-mean.png"], ["class-0-mean.png", "class-1-mean.png"],
                                    ["class-0-mean.png", "class-1-mean.png", "class-2-mean.png"]]
    assert [(entry["index"], entry["images"], entry["mean_map"]) for entry in result["classes"]] == \
        [(index, 2, f"class-{index}-mean.png") for index in range(3)]


def dark_is_nan_onnx(side: int = 32) -> onnx.ModelProto:
    """Scores log(1 + each channel's mean): finite on the upload check's inputs in [-1, 1] and on
    light photos, NaN on a dark one (normalized, its channels' means are under -1)."""
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    nodes = [helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Add", ["flat", "one"], ["shifted"]),
             helper.make_node("Log", ["shifted"], ["scores"])]
    graph = helper.make_graph(nodes, "dark-is-nan",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, side, side])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 3])], initializer=[one])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def dark_is_nan(client):
    served = client.post("/v1/models", data={"name": "dark-is-nan", "input_size": 32},
                         files={"onnx": ("m.onnx", dark_is_nan_onnx().SerializeToString())})
    assert served.status_code == 201, served.text  # the upload check's random inputs score finite
    return "dark-is-nan"


def two_tone(left: tuple[int, int, int], right: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (48, 48), left)
    image.paste(right, (24, 0, 48, 48))
    return encode(image)


LIGHT, DARK = two_tone((250, 240, 230), (190, 200, 210)), two_tone((10, 20, 30), (40, 30, 20))


def test_an_image_that_a_model_scores_nan_is_a_422_naming_it_not_null_probabilities(client, dark_is_nan):
    """Such a model answered 200 with "probability": null (the schema's float), which the
    project's own client refused as an unexpected answer."""
    assert client.post(f"/v1/models/{dark_is_nan}/predict", files=[upload(LIGHT)]).status_code == 200
    for route, data in (("predict", {}), ("explain", {"method": "occlusion", "window": 16, "stride": 16})):
        refused = client.post(f"/v1/models/{dark_is_nan}/{route}", files=[upload(LIGHT), upload(DARK)], data=data)
        body = assert_refused(refused, 422, "file.1", "scored it NaN or infinite")
        assert body["type"].endswith("non-finite-scores"), body
    # deletion blacks the light image out, down to a copy the model scores NaN; for class 0 (for
    # the top class, 2, hiding any window raises it: a flat map, which gets no scores)
    refused = client.post(f"/v1/models/{dark_is_nan}/explain", files=[upload(LIGHT)],
                          data={"method": "occlusion", "window": 16, "stride": 16, "target": 0, "faithfulness": "true"})
    assert_refused(refused, 422, "faithfulness", "scored a masked copy of it NaN or infinite")


def explained_by_class(client, model: str, images: dict[str, bytes], folder) -> tuple[dict, dict[str, dict]]:
    """An explain-dataset job's result on a data set of `images` (CLASS/FILE: bytes), run here by
    occlusion, and its table's rows by class."""
    registry = client.app.state.registry
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as files:
        for name, image in images.items():
            files.writestr(name, image)
    limits = ArchiveLimits(max_files=10, max_total_bytes=10**7, max_image_pixels=10**7)
    dataset = ingest_archive(archive.getvalue(), registry.storage.datasets, None, limits)
    config = explain_dataset_config({"dataset_id": dataset["id"], "model": model, "method": "occlusion",
                                     "options": {"window": 16, "stride": 16}})
    result = explain_dataset(config, registry.get(model), registry.storage.datasets, folder, lambda name: name,
                             10**7, lambda fraction, **details: None, lambda: False)
    return result, {row["file"].split("/")[0]: row for row in csv.DictReader(open(folder / "explanations.csv"))}


def test_a_data_sets_images_that_a_model_scores_nan_are_rows_with_their_error(client, dark_is_nan, tmp_path):
    """The job had succeeded with NaN probabilities and scores, which its event stream sent as
    bare NaN (not JSON: the web page's JSON.parse threw)."""
    result, rows = explained_by_class(client, dark_is_nan, {"light/1.png": LIGHT, "dark/2.png": DARK,
                                                            "light/3.png": LIGHT}, tmp_path)
    assert result["explained"] == 2 and result["failed"] == 1
    assert "scored it NaN or infinite" in rows["dark"]["error"] and not rows["dark"]["probability"]
    assert not rows["light"]["error"] and 0 < float(rows["light"]["probability"]) <= 1


def light_fails_onnx(side: int = 32) -> onnx.ModelProto:
    """Scores a row of a 2-row table picked by the floor of the largest channel mean: rows -2 to 1
    exist, for the upload check's inputs in [-1, 1] and dark photos (normalized, their means are
    under -1); a light photo's, over 2, has none, and ONNX Runtime's Gather fails on it."""
    # rows of 1 and -1: one-hot rows of 1 and 0 would read as probabilities, refused at upload
    table = numpy_helper.from_array(np.eye(2, 3, dtype=np.float32) * 2 - 1, "table")
    nodes = [helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("ReduceMax", ["flat"], ["largest"], axes=[1], keepdims=0),
             helper.make_node("Floor", ["largest"], ["floored"]),
             helper.make_node("Cast", ["floored"], ["row"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "row"], ["scores"], axis=0)]
    graph = helper.make_graph(nodes, "light-fails",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, side, side])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 3])],
                              initializer=[table])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_image_that_a_models_graph_fails_on_is_a_422_and_the_model_still_serves(client, tmp_path):
    """ONNX Runtime's error (an index out of range here; an integer division by zero is another)
    was an unhandled 500, as if the service had failed; in a data set, it failed the whole job."""
    served = client.post("/v1/models", data={"name": "light-fails", "input_size": 32},
                         files={"onnx": ("m.onnx", light_fails_onnx().SerializeToString())})
    assert served.status_code == 201, served.text  # the upload check's random inputs pass
    for route, data in (("predict", {}), ("explain", {"method": "occlusion", "window": 16, "stride": 16})):
        refused = client.post(f"/v1/models/light-fails/{route}", files=[upload(DARK), upload(LIGHT)], data=data)
        assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
        body = refused.json()
        assert body["type"].endswith("/model-failed") and "Gather node failed on this input" in body["detail"], body
        assert "out of data bounds" in body["detail"] and "the model, not the image, is at fault" in body["detail"]
    assert client.post("/v1/models/light-fails/predict", files=[upload(DARK)]).status_code == 200
    result, rows = explained_by_class(client, "light-fails", {"light/1.png": LIGHT, "dark/2.png": DARK,
                                                              "dark/3.png": DARK}, tmp_path)
    assert result["explained"] == 2 and result["failed"] == 1
    assert "Gather node failed on this input" in rows["light"]["error"], rows


def graph_using_the_name_logits(where: str) -> onnx.ModelProto:
    """A 4-class classifier whose graph names a tensor `logits` that is not its first output."""
    names = {"input": ("logits", "flat", "scores"), "inner": ("pixels", "logits", "scores"),
             "second output": ("pixels", "flat", "probs")}[where]
    pixels, flat, scores = names
    weight = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "weight")
    nodes = [helper.make_node("GlobalAveragePool", [pixels], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], [flat]),
             helper.make_node("Gemm", [flat, "weight"], [scores], transB=1)]
    outputs = [helper.make_tensor_value_info(scores, TensorProto.FLOAT, ["n", 4])]
    if where == "second output":
        nodes.append(helper.make_node("Identity", [scores], ["logits"]))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4]))
    graph = helper.make_graph(nodes, "named", [helper.make_tensor_value_info(pixels, TensorProto.FLOAT,
                                                                            ["n", 3, 32, 32])],
                              outputs, initializer=[weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("where", ["input", "inner", "second output"])
def test_an_onnx_graph_that_already_names_a_tensor_logits_is_served(client, where):
    """The upload renames the first output `logits`: such graphs were refused ("Duplicate
    definition of name (logits)"), a clash of the service's own making."""
    name = f"named-{where.replace(' ', '-')}"
    served = client.post("/v1/models", data={"name": name, "input_size": 32},
                         files={"onnx": ("m.onnx", graph_using_the_name_logits(where).SerializeToString())})
    assert served.status_code == 201, served.text
    answer = client.post(f"/v1/models/{name}/predict", files=[upload(encode(chelsea()))])
    assert answer.status_code == 200 and len(answer.json()["results"][0]["predictions"]) == 4, answer.text


def test_a_channels_last_onnx_input_is_named_as_such(client):
    """[n, h, w, 3] with free sides was refused as "the ONNX input is Nonex3, not 32", on input_size."""
    nodes = [helper.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("GlobalAveragePool", ["nchw"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "weight"], ["scores"], transB=1)]
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                            ["n", "h", "w", 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 4])],
                              initializer=[numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    refused = client.post("/v1/models", data={"name": "nhwc", "input_size": 32},
                          files={"onnx": ("m.onnx", model.SerializeToString())})
    assert_refused(refused, 422, "onnx", "must be NCHW with 3 channels; it is [None, None, None, 3] (channels last, "
                                         "NHWC?)")


def test_float16_logits_of_many_classes_are_ranked_in_float32(client):
    """The softmax ran in the graph's float16: 70,000 exponentials overflowed its sum, so every
    probability was 0 and predict answered class 0, where explain answered the right one."""
    classes, best = 70_000, 64_540
    bias = np.zeros(classes, dtype=np.float32)
    bias[best] = 0.01  # e^-0.01 x 70,000 > 65,504, float16's largest
    nodes = [helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "weight", "bias"], ["scores"], transB=1),
             helper.make_node("Cast", ["scores"], ["half"], to=TensorProto.FLOAT16)]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                            ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["n", classes])],
                              initializer=[numpy_helper.from_array(np.zeros((classes, 3), dtype=np.float32), "weight"),
                                           numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    served = client.post("/v1/models", data={"name": "half-logits", "input_size": 32},
                         files={"onnx": ("m.onnx", model.SerializeToString())})
    assert served.status_code == 201, served.text
    answer = client.post("/v1/models/half-logits/predict", files=[upload(encode(chelsea()))], data={"top_k": 2})
    top = answer.json()["results"][0]["predictions"]
    assert top[0]["index"] == best and top[0]["probability"] > top[1]["probability"] > 0, top


def test_a_data_set_explained_without_a_method_gets_the_models_own(client):
    """gradcam was the default for every model, so a model served from ONNX alone was refused
    ("cannot answer gradcam") unless a method was named; /explain already used its own."""
    served = client.post("/v1/models", data={"name": "onnx-default-method", "input_size": 32},
                         files={"onnx": ("m.onnx", onnx_classifier().SerializeToString())})
    assert served.status_code == 201, served.text
    dataset = client.post("/v1/datasets", files=[upload(shapes_archive(per_class=1), "s.zip", "application/zip")])
    for model, method in (("onnx-default-method", "occlusion"), ("efficientnet_lite0", "gradcam")):
        job = client.post("/v1/jobs/explain-dataset", json={"dataset_id": dataset.json()["id"], "model": model})
        assert job.status_code == 202 and job.json()["params"]["method"] == method, job.text
        client.delete(job.headers["location"])


def test_onnx_with_external_data_or_custom_operators_is_422(client):
    for model, words in ((onnx_classifier(external_data=True), "external data"),
                         (onnx_classifier(domain="com.evil"), "custom operator")):
        response = client.post("/v1/models", data={"name": "tiny-onnx"},
                               files={"onnx": ("m.onnx", model.SerializeToString())})
        assert_refused(response, 422, "onnx", words)
    garbage = client.post("/v1/models", data={"name": "tiny-onnx"}, files={"onnx": ("m.onnx", b"not onnx")})
    assert_refused(garbage, 422, "onnx", "ONNX")
    served = client.post("/v1/models", data={"name": "tiny-onnx", "input_size": 32},
                         files={"onnx": ("m.onnx", onnx_classifier().SerializeToString())})
    assert served.status_code == 201, served.text


def test_an_onnx_model_of_more_classes_than_a_target_can_name_is_422(client, monkeypatch):
    """Every answer holds a row of its classes: a 208-byte file expanded to 2 million of them.
    Where the graph declares its class count, no run is needed to refuse it."""
    undeclared = client.post("/v1/models", data={"name": "wide", "input_size": 32}, files={
        "onnx": ("m.onnx", onnx_classifier(classes=100_001, declared_classes="k").SerializeToString())})
    assert_refused(undeclared, 422, "onnx", "100001 classes; a served model has 2 to 100000")
    monkeypatch.setattr(onnx_upload, "_check_runs", lambda *args: pytest.fail("the file was run"))
    declared = client.post("/v1/models", data={"name": "wide", "input_size": 32}, files={
        "onnx": ("m.onnx", onnx_classifier(classes=100_001).SerializeToString())})
    assert_refused(declared, 422, "onnx", "100001 classes; a served model has 2 to 100000")


def test_a_resize_smaller_than_the_input_is_refused_before_anything_runs(client, small_resnet, monkeypatch):
    monkeypatch.setattr(onnx_upload, "_check_runs", lambda *args: pytest.fail("the file was run"))
    monkeypatch.setattr(model_upload, "adapt", lambda *args: pytest.fail("the network was built"))
    onnx_file = client.post("/v1/models", data={"name": "cropped", "input_size": 40, "resize_size": 36}, files={
        "onnx": ("m.onnx", onnx_classifier(side=40).SerializeToString())})
    assert_refused(onnx_file, 422, "resize_size", "resize_size 36 is smaller than input_size 40")
    weights = post_weights(client, weights_of(small_resnet), "cropped", resize_size=63)
    assert_refused(weights, 422, "resize_size", "resize_size 63 is smaller than input_size 64")


def with_initializers_as_inputs(model: onnx.ModelProto, count: int) -> onnx.ModelProto:
    """`count` unused scalar initializers, each also listed as a graph input (as old exporters did)."""
    for index in range(count):
        model.graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype=np.float32), f"i{index}"))
        model.graph.input.append(helper.make_tensor_value_info(f"i{index}", TensorProto.FLOAT, []))
    return model


def test_an_onnx_file_of_many_entries_costs_the_api_little(client, monkeypatch):
    """10 000 initializers listed as inputs took 27 s of the API's CPU (a quadratic lookup); over
    MAX_ONNX_MESSAGES entries, a file is refused before anything else is done with them."""
    started = time.perf_counter()
    served = client.post("/v1/models", data={"name": "many-inputs", "input_size": 32}, files={
        "onnx": ("m.onnx", with_initializers_as_inputs(onnx_classifier(), 10_000).SerializeToString())})
    assert served.status_code == 201, served.text
    assert time.perf_counter() - started < 15
    monkeypatch.setattr(onnx_upload, "MAX_ONNX_MESSAGES", 1000)
    refused = client.post("/v1/models", data={"name": "too-many", "input_size": 32}, files={
        "onnx": ("m.onnx", with_initializers_as_inputs(onnx_classifier(), 1000).SerializeToString())})
    assert_refused(refused, 422, "onnx", "over 1000 nodes, tensors, attributes")


def protobuf_length(value: int) -> bytes:
    encoded = b""
    while value >= 0x80:
        encoded, value = encoded + bytes([value & 0x7F | 0x80]), value >> 7
    return encoded + bytes([value])


def test_an_onnx_file_of_empty_nodes_is_refused_before_protobuf_parses_it(client, monkeypatch):
    """An empty node costs 2 bytes of file and about 130 parsed: 30 MB of them took the API process
    from 1.4 to 3.3 GB (and kept it) before the count refused them."""
    graph = b"\x0a\x00" * 500_000  # GraphProto.node, empty, half a million times
    bomb = b"\x08\x07" + b"\x3a" + protobuf_length(len(graph)) + graph  # ir_version 7, ModelProto.graph
    parsed = []
    monkeypatch.setattr(onnx, "load_from_string", lambda blob: parsed.append(blob))
    refused = client.post("/v1/models", data={"name": "empty-nodes", "input_size": 32},
                          files={"onnx": ("m.onnx", bomb)})
    assert_refused(refused, 422, "onnx", f"over {onnx_upload.MAX_ONNX_MESSAGES} nodes, tensors")
    assert not parsed
    fields = b"\x08\x07" * (onnx_upload.MAX_ONNX_FIELDS + 1)  # a number a field, unpacked
    assert_refused(client.post("/v1/models", data={"name": "many-fields", "input_size": 32},
                               files={"onnx": ("m.onnx", fields)}), 422, "onnx", "fields")
    # a group, which protobuf skips unparsed, switched the count off before the nodes after it
    grouped = b"\x08\x07" + protobuf_length(100 << 3 | 3) + protobuf_length(100 << 3 | 4) + bomb[2:]
    assert_refused(client.post("/v1/models", data={"name": "grouped", "input_size": 32},
                               files={"onnx": ("m.onnx", grouped)}), 422, "onnx", "a protobuf group")
    long_number = b"\x08" + b"\xff" * 300_000 + b"\x01"  # each byte made the number longer: 2.3 s for 320 KB
    assert_refused(client.post("/v1/models", data={"name": "long-number", "input_size": 32},
                               files={"onnx": ("m.onnx", long_number)}), 422, "onnx", "a number of over 10 bytes")
    assert not parsed


def test_an_onnx_file_of_packed_integers_is_refused_before_protobuf_parses_it(client, monkeypatch):
    """A packed int64 costs 1 byte of file and 8 parsed: 100 MB of zeros in one initializer's
    int64_data took the API process from 1.3 to 3.4 GB, and the upload was accepted."""
    model = onnx_classifier()
    count = onnx_upload.MAX_ONNX_PACKED_NUMBERS + 1
    model.graph.initializer.append(onnx.helper.make_tensor("unused", onnx.TensorProto.INT64, [count],
                                                           np.zeros(count, dtype=np.int64)))
    packed = model.SerializeToString()
    assert len(packed) < count + 100_000  # a byte a number
    parsed = []
    monkeypatch.setattr(onnx, "load_from_string", lambda blob: parsed.append(blob))
    refused = client.post("/v1/models", data={"name": "packed", "input_size": 32}, files={"onnx": ("m.onnx", packed)})
    assert_refused(refused, 422, "onnx", f"packs over {onnx_upload.MAX_ONNX_PACKED_NUMBERS} integers")
    assert not parsed


def test_weights_of_very_many_tensors_are_refused_before_they_are_made(client, monkeypatch):
    """300 000 empty tensors (17.6 MB) took 4.4 s and 1 GB to load before the names were checked."""
    blob = save({f"t{index}": torch.zeros(0) for index in range(model_upload.MAX_TENSORS + 1)})
    header_end = 8 + int.from_bytes(blob[:8], "little")
    header = blob[8:header_end].replace(b'"data_offsets"', b'"data_offset\\u0073"')  # JSON reads it the same
    escaped_blob = len(header).to_bytes(8, "little") + header + blob[header_end:]
    made = []
    monkeypatch.setattr(model_upload, "load_safetensors", lambda blob: made.append(blob))
    for weights in (blob, escaped_blob):
        assert_refused(post_weights(client, weights), 422, "weights", f"over {model_upload.MAX_TENSORS} tensors")
    assert not made


def test_the_count_before_parsing_is_the_count_after():
    model = with_initializers_as_inputs(onnx_classifier(), 50)
    export = io.BytesIO()
    torch.onnx.export(torchvision.models.resnet18(num_classes=3).eval(), torch.rand(1, 3, 32, 32), export,
                      dynamo=False, input_names=["input"], output_names=["logits"])
    for blob in (model.SerializeToString(), export.getvalue()):
        assert onnx_upload.count_onnx_messages(blob) == sum(1 for _ in onnx_upload._messages(
            onnx.load_from_string(blob)))


@pytest.mark.parametrize("name", ["../x", "/proc", "a/b", "..", ".hidden", "x" * 65])
def test_model_names_that_leave_the_models_folder_are_422(client, small_resnet, name):
    assert_refused(post_weights(client, weights_of(small_resnet), name=name), 422, "name", "letters")


@pytest.mark.parametrize("path", ["..", "...", ".hidden", "a..b", "%2Fproc", "..%2F..%2Fetc"])
def test_model_references_in_paths_never_leave_the_models_folder(client, path):
    for response in (client.get(f"/v1/models/{path}"), client.get(f"/v1/models/{path}/versions"),
                     client.post(f"/v1/models/{path}/predict", files=[upload(encode(chelsea()))]),
                     client.delete(f"/v1/models/{path}@1"),
                     client.put(f"/v1/models/{path}/default", json={"version": 1})):
        assert response.status_code in (404, 422), (path, response.status_code, response.text)
        assert response.headers["content-type"] == "application/problem+json"


def test_a_version_where_a_models_name_is_taken_is_named_as_such(client, wide_onnx):
    """`wide-onnx@1` was refused as a name "of 1-64 letters, digits, ..."."""
    for response in (client.get(f"/v1/models/{wide_onnx}@1/versions"),
                     client.put(f"/v1/models/{wide_onnx}@1/default", json={"version": 1}),
                     client.delete(f"/v1/models/{wide_onnx}@1/default")):
        assert_refused(response, 422, "name", f"'{wide_onnx}@1' names a version; this takes the model's name alone")


def test_built_in_names_are_409(client, small_resnet):
    assert_refused(post_weights(client, weights_of(small_resnet), name="efficientnet_lite0"), 409, "name", "built-in")
    # a look-alike in other case was served beside it
    assert_refused(post_weights(client, weights_of(small_resnet), name="EfficientNet_Lite0"), 409, "name", "built-in")
    assert client.delete("/v1/models/efficientnet_lite0@1").status_code == 409
    assert client.put("/v1/models/efficientnet_lite0/default", json={"version": 1}).status_code == 409


def test_an_upload_over_the_size_limit_is_413(tmp_path_factory, small_resnet):
    settings = Settings(data_dir=tmp_path_factory.mktemp("small-uploads"), max_model_bytes=1000)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as client:
        assert post_weights(client, weights_of(small_resnet)).status_code == 413
        assert not (settings.data_dir / "models").exists() or not os.listdir(settings.data_dir / "models")


def test_external_data_hidden_in_a_sparse_initializer_is_422(client):
    """onnx's own helper does not look at sparse tensors; ONNX Runtime would read the file."""
    model = onnx_classifier()
    values = helper.make_tensor("secret_values", TensorProto.FLOAT, [1], [0.0])
    values.ClearField("float_data")
    values.data_location = TensorProto.EXTERNAL
    entry = values.external_data.add()
    entry.key, entry.value = "location", "var/redis/appendonly.aof"
    indices = helper.make_tensor("secret_indices", TensorProto.INT64, [1], [0])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    response = client.post("/v1/models", data={"name": "sparse-onnx", "input_size": 32},
                           files={"onnx": ("m.onnx", model.SerializeToString())})
    assert_refused(response, 422, "onnx", "external data")


def test_onnx_inputs_need_a_dynamic_batch_and_a_bounded_size(client):
    fixed_batch = onnx_classifier()
    fixed_batch.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    assert_refused(client.post("/v1/models", data={"name": "fixed-onnx", "input_size": 32},
                               files={"onnx": ("m.onnx", fixed_batch.SerializeToString())}), 422, "onnx", "batch")
    huge = onnx_classifier()
    for axis in (2, 3):
        huge.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = 30000
    assert_refused(client.post("/v1/models", data={"name": "huge-onnx"},
                               files={"onnx": ("m.onnx", huge.SerializeToString())}), 422, "input_size", "<= 1024")


@pytest.mark.parametrize("field, values, words", [
    ("std", ["0.2", "0", "0.2"], "0 < std"), ("std", ["nan", "0.2", "0.2"], "finite"), ("mean", ["inf", "0", "0"], "finite"),
])
def test_mean_and_std_must_be_finite_and_std_positive(client, small_resnet, field, values, words):
    assert_refused(post_weights(client, weights_of(small_resnet), **{field: values}), 422, field, words)


def test_extreme_shapes_and_occlusion_costs_stay_bounded(client):
    served = client.post("/v1/models", data={"name": "tiny-any-size", "input_size": 32},
                         files={"onnx": ("m.onnx", onnx_classifier().SerializeToString())})
    assert served.status_code == 201, served.text
    # 40000 x 1: on torchvision's grid the whole image would be 10,240,000 x 256 pixels
    line = encode(Image.new("RGB", (40000, 1), (200, 30, 30)), "PNG")
    predicted = client.post("/v1/models/tiny-any-size/predict", files=[upload(line, "line.png", "image/png")])
    assert predicted.status_code == 200, predicted.text
    refused = client.post("/v1/models/efficientnet_lite0/explain", files=[upload(encode(chelsea()))],
                          data={"method": "occlusion", "window": 4, "stride": 1})  # 48,841 inputs at 224
    assert_refused(refused, 422, "stride", "needs 48841 occluded inputs per image at 224x224; the limit is 4096")


def onnx_graph(nodes, initializers=()) -> bytes:
    """A classifier over `pixels` (n, 3, 32, 32) whose logits are the value `scores`."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)],
                              initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


POOLED = [helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"])]


def counting_loop(output: str) -> onnx.NodeProto:
    """A Loop adding 1 to `zero` `trips` times."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Constant", [], ["c1"], value=one),
         helper.make_node("Add", ["acc_in", "c1"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [])])
    return helper.make_node("Loop", ["trips", "true", "zero"], [output], body=body)


def looping_onnx(inside_an_if: bool) -> bytes:
    """The logits plus 0 x a Loop's count (10 trips here; an attacker's 2**62 never ends), the Loop
    at the top or in both branches of an If."""
    constants = [numpy_helper.from_array(np.array(10, dtype=np.int64), "trips"),
                 numpy_helper.from_array(np.array(True), "true"),
                 numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    counting = counting_loop("count")
    if inside_an_if:
        branch = helper.make_graph([counting_loop("counted")], "branch", [],
                                   [helper.make_tensor_value_info("counted", TensorProto.FLOAT, [])])
        counting = helper.make_node("If", ["true"], ["count"], then_branch=branch, else_branch=branch)
    nodes = [*POOLED, counting, helper.make_node("Mul", ["count", "zero"], ["nothing"]),
             helper.make_node("Add", ["flat", "nothing"], ["scores"])]
    return onnx_graph(nodes, constants)


@pytest.mark.parametrize("inside_an_if, operator", [(False, "Loop"), (True, "If")])
def test_onnx_control_flow_is_422_naming_the_operator(client, inside_an_if, operator):
    response = client.post("/v1/models", data={"name": "looping-onnx", "input_size": 32},
                           files={"onnx": ("m.onnx", looping_onnx(inside_an_if))})
    assert_refused(response, 422, "onnx", f"control-flow operator {operator}")


@pytest.mark.parametrize("batch_node, words", [
    (helper.make_node("Reshape", ["flat", "two_rows"], ["scores"]), "cannot run the model on a batch of 1"),  # 2 rows
    (helper.make_node("ReduceMean", ["flat"], ["scores"], axes=[0], keepdims=1), "(batch, classes)"),  # 1 row
], ids=["constant-rows", "batch-averaged"])
def test_onnx_logits_without_a_row_per_image_are_422(client, batch_node, words):
    blob = onnx_graph([*POOLED, batch_node], [numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "two_rows")])
    response = client.post("/v1/models", data={"name": "batchless-onnx", "input_size": 32},
                           files={"onnx": ("m.onnx", blob)})
    assert_refused(response, 422, "onnx", words)
    assert client.get("/v1/models/batchless-onnx").status_code == 404


def constant_sized_onnx(shape: list[int]) -> bytes:
    """Logits plus the sum of zeros of `shape`, a size written in the file."""
    zeros = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    return onnx_graph([*POOLED, helper.make_node("ConstantOfShape", ["shape"], ["zeros"], value=zeros),
                       helper.make_node("ReduceSum", ["zeros"], ["total"], keepdims=0),
                       helper.make_node("Add", ["flat", "total"], ["scores"])],
                      [numpy_helper.from_array(np.array(shape, dtype=np.int64), "shape")])


def batch_squared_onnx(per_pair: int) -> bytes:
    """Zeros of (n, n, per_pair) for a batch of n, its size taken from the input's shape alone:
    it grows with the square of the batch (64 KiB x n^2 for 16384)."""
    zeros = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    return onnx_graph([*POOLED, helper.make_node("Shape", ["pixels"], ["dims"]),
                       helper.make_node("Slice", ["dims", "start", "end"], ["n"]),
                       helper.make_node("Concat", ["n", "n", "per_pair"], ["square"], axis=0),
                       helper.make_node("ConstantOfShape", ["square"], ["zeros"], value=zeros),
                       helper.make_node("ReduceSum", ["zeros", "pairs"], ["totals"], keepdims=0),
                       helper.make_node("Unsqueeze", ["totals", "last"], ["column"]),
                       helper.make_node("Add", ["flat", "column"], ["scores"])],
                      [numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
                       numpy_helper.from_array(np.array([1], dtype=np.int64), "end"),
                       numpy_helper.from_array(np.array([per_pair], dtype=np.int64), "per_pair"),
                       numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "pairs"),
                       numpy_helper.from_array(np.array([1], dtype=np.int64), "last")])


def pixel_sized_onnx(through_a_shape: bool) -> bytes:
    """Zeros whose count comes from the pixels' values: their brightest value x 1e10 directly, or
    the shape of NonZero's answer (how many pixels are bright)."""
    zeros = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    if through_a_shape:
        count = [helper.make_node("Greater", ["pixels", "threshold"], ["bright"]),
                 helper.make_node("NonZero", ["bright"], ["where"]), helper.make_node("Shape", ["where"], ["count"])]
    else:
        count = [helper.make_node("ReduceMax", ["pixels"], ["brightest"], keepdims=0),
                 helper.make_node("Mul", ["brightest", "scale"], ["scaled"]),
                 helper.make_node("Cast", ["scaled"], ["length"], to=TensorProto.INT64),
                 helper.make_node("Unsqueeze", ["length", "first"], ["count"])]
    return onnx_graph([*POOLED, *count, helper.make_node("ConstantOfShape", ["count"], ["zeros"], value=zeros),
                       helper.make_node("ReduceSum", ["zeros"], ["total"], keepdims=0),
                       helper.make_node("Add", ["flat", "total"], ["scores"])],
                      [numpy_helper.from_array(np.array(0.5, dtype=np.float32), "threshold"),
                       numpy_helper.from_array(np.array(1e10, dtype=np.float32), "scale"),
                       numpy_helper.from_array(np.array([0], dtype=np.int64), "first")])


def slow_onnx(products: int) -> bytes:
    """`products` 1024 x 1024 matrix products on a matrix that depends on the input (so that
    ONNX Runtime cannot fold them into a constant when it loads the file)."""
    chain = [helper.make_node("MatMul", [f"m{index}", "w"], [f"m{index + 1}"]) for index in range(products)]
    return onnx_graph([*POOLED, helper.make_node("ReduceSum", ["pixels"], ["seed"], keepdims=0),
                       helper.make_node("Add", ["ones", "seed"], ["m0"]), *chain,
                       helper.make_node("ReduceSum", [f"m{products}"], ["total"], keepdims=0),
                       helper.make_node("Mul", ["total", "zero"], ["nothing"]),
                       helper.make_node("Add", ["flat", "nothing"], ["scores"])],
                      [numpy_helper.from_array(np.full((1024, 1024), 1 / 1024, np.float32), "w"),
                       numpy_helper.from_array(np.ones((1024, 1024), np.float32), "ones"),
                       numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")])


def check(blob: bytes, reference: Path, memory_bytes: int = 4 * 2**30, seconds: float = 60.0,
          max_batch: int = 32) -> int:
    """The number of classes the upload's check finds (InvalidRequest when it refuses)."""
    return len(checked_spec(blob, reference, memory_bytes, seconds, max_batch).labels)


def checked_spec(blob: bytes, reference: Path, memory_bytes: int = 4 * 2**30, seconds: float = 60.0,
                 max_batch: int = 32) -> ModelSpec:
    limits = onnx_upload.OnnxCheckLimits(memory_bytes, seconds, max_batch)
    return onnx_upload.onnx_model("checked", blob, None, model_upload.Preprocessing(input_size=32), limits,
                                   reference)[0]


def elementwise_onnx(channels: int, layers: int) -> bytes:
    """A 1x1 convolution to `channels`, then `layers` Softplus over them."""
    nodes = [helper.make_node("Conv", ["pixels", "w"], ["h0"]),
             *(helper.make_node("Softplus", [f"h{index}"], [f"h{index + 1}"]) for index in range(layers)),
             helper.make_node("GlobalAveragePool", [f"h{layers}"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]), helper.make_node("Gemm", ["flat", "head"], ["scores"])]
    return onnx_graph(nodes, [numpy_helper.from_array(np.full((channels, 3, 1, 1), 0.1, np.float32), "w"),
                              numpy_helper.from_array(np.full((channels, 3), 0.1, np.float32), "head")])


def test_an_onnx_graph_slower_than_its_flops_say_is_charged_its_time(timing_reference):
    """Each value a Softplus writes counts as one FLOP, and costs hundreds of times what one of
    Lite0's convolutions' FLOPs does on this CPU: this graph counts 0.5% of Lite0's FLOPs and took
    3.3-3.8x its time (charged 1 before its runs were timed)."""
    spec = checked_spec(elementwise_onnx(256, 8), timing_reference)
    assert spec.flops < REFERENCE_FLOPS / 100 and spec.time_ratio > 2, spec
    assert relative_cost(spec.flops, spec.time_ratio) == spec.time_ratio
    light = checked_spec(elementwise_onnx(16, 1), timing_reference)
    assert light.time_ratio < 0.5 and relative_cost(light.flops, light.time_ratio) == 1.0, light


def test_the_checks_inputs_hold_the_values_serving_feeds(timing_reference):
    """Photos normalized by ImageNet's mean and std reach -2.1..2.6. The check ran values in -1..1,
    which a graph could tell from photos' (|x| > 1.01) to take a slow path (fmod on NaN: 14x its
    charge, an attacker review) or give NaN logits only when served: this one is refused now."""
    blob = onnx_graph([*POOLED, helper.make_node("Abs", ["pixels"], ["size"]),
                       helper.make_node("Sub", ["size", "limit"], ["over"]),
                       helper.make_node("Relu", ["over"], ["beyond"]),
                       helper.make_node("ReduceMax", ["beyond"], ["most"], keepdims=0),
                       helper.make_node("Neg", ["most"], ["negative"]), helper.make_node("Sqrt", ["negative"], ["nan"]),
                       helper.make_node("Add", ["flat", "nan"], ["scores"])],
                      [numpy_helper.from_array(np.array(1.01, np.float32), "limit")])
    with pytest.raises(InvalidRequest, match="the model's logits are NaN or infinite"):
        check(blob, timing_reference)


def test_denormal_values_are_served_as_zero(client):
    """A graph can make photos' values denormal where the check's uniform input stays normal, and
    each operation on a denormal takes a slow path on this CPU (69-91x Lite0's time for a graph
    charged 1, before). Served, they are zero: logits (x * 1e-39) * 1e38 are all 0 for any x."""
    blob = onnx_graph([*POOLED, helper.make_node("Mul", ["flat", "tiny"], ["denormal"]),
                       helper.make_node("Mul", ["denormal", "huge"], ["scores"])],
                      [numpy_helper.from_array(np.array(1e-39, np.float32), "tiny"),
                       numpy_helper.from_array(np.array(1e38, np.float32), "huge")])
    response = client.post("/v1/models", data={"name": "denormal-onnx", "input_size": 32},
                           files={"onnx": ("m.onnx", blob)})
    assert response.status_code == 201, response.text
    predicted = client.post("/v1/models/denormal-onnx/predict", files=[upload(encode(chelsea()))])
    assert predicted.status_code == 200, predicted.text
    probabilities = [entry["probability"] for entry in predicted.json()["results"][0]["predictions"]]
    assert probabilities == pytest.approx([1 / 3] * 3, abs=1e-6), predicted.json()


def test_an_onnx_graph_whose_cost_grows_only_in_larger_batches_is_charged_its_slowest(timing_reference):
    """A kernel tiled to 4 x (batch // 4) + 1: 1x1 for one image and for two, where the FLOPs are
    counted (a growth there is refused), 33x33 for 32, 1089 times the work per image. Its runs
    are timed at every size it is served at."""
    constants = {"w": np.full((512, 3, 1, 1), 0.01, np.float32), "head": np.full((512, 3), 0.1, np.float32),
                 "ones": np.array([1, 1], np.int64), "start": np.array([0], np.int64), "end": np.array([1], np.int64),
                 "four": np.array([4], np.int64), "one": np.array([1], np.int64)}
    blob = onnx_graph([
        helper.make_node("Shape", ["pixels"], ["shape"]), helper.make_node("Slice", ["shape", "start", "end"], ["n"]),
        helper.make_node("Div", ["n", "four"], ["quarter"]), helper.make_node("Mul", ["quarter", "four"], ["whole"]),
        helper.make_node("Add", ["whole", "one"], ["side"]),
        helper.make_node("Concat", ["ones", "side", "side"], ["repeats"], axis=0),
        helper.make_node("Tile", ["w", "repeats"], ["kernel"]),
        helper.make_node("Conv", ["pixels", "kernel"], ["features"], auto_pad="SAME_UPPER"),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]), helper.make_node("Gemm", ["flat", "head"], ["scores"])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()])
    spec = checked_spec(blob, timing_reference)
    assert spec.flops < REFERENCE_FLOPS / 100 and spec.time_ratio > 2, spec


def test_an_onnx_model_that_allocates_without_bound_is_422_and_the_server_carries_on(client):
    response = client.post("/v1/models", data={"name": "hungry-onnx", "input_size": 32},
                           files={"onnx": ("m.onnx", constant_sized_onnx([65536, 65536, 4]))})  # 64 GiB
    assert_refused(response, 422, "onnx", "needed more than 4096 MiB of memory")
    assert client.get("/v1/models/hungry-onnx").status_code == 404
    predicted = client.post("/v1/models/efficientnet_lite0/predict", files=[upload(encode(chelsea()))])
    assert predicted.status_code == 200, predicted.text


def test_the_checks_memory_cap_decides(timing_reference):
    """1 GiB of zeros: refused under a 256 MiB cap (this machine could give it), served under 4 GiB."""
    blob = constant_sized_onnx([256, 1024, 1024])
    with pytest.raises(InvalidRequest, match=r"more than 256 MiB of memory to load the model and run batches of "
                                             r"1, 2, 4, 8, 16 and 32 images"):
        check(blob, timing_reference, memory_bytes=256 * 2**20)
    assert check(blob, timing_reference) == 3


def test_a_model_whose_memory_grows_faster_than_the_batch_is_measured_at_the_largest_served_batch(
        timing_reference):
    """64 KiB x n^2: 0.6 MiB at a batch of 3, 64 MiB at 32 (GAZER_MAX_BATCH), over a 48 MiB cap.
    Within the cap (batches up to 8) its cost still grows faster than the batch: its FLOPs per
    image, counted at 1 and 2 images, are refused (a count at one image served it, charged as
    one image's whatever the batch it then ran in)."""
    blob = batch_squared_onnx(16384)
    with pytest.raises(InvalidRequest, match="more than 48 MiB of memory"):
        check(blob, timing_reference, memory_bytes=48 * 2**20, max_batch=32)
    with pytest.raises(InvalidRequest, match=r"FLOPs per image grow with the batch size \(.* for one image, "
                                             r".* for 2\)"):
        check(blob, timing_reference, memory_bytes=48 * 2**20, max_batch=8)
    # grows too, by a value an image: within 1%
    assert check(batch_squared_onnx(1), timing_reference, max_batch=8) == 3


def batch_five_onnx() -> bytes:
    """Logits that lift class 0 by 1000 when the batch holds exactly 5 images, a size the
    check (1, 2, 4, ..., 32) does not run."""
    return onnx_graph([*POOLED, helper.make_node("Shape", ["pixels"], ["dims"]),
                       helper.make_node("Slice", ["dims", "start", "end"], ["n"]),
                       helper.make_node("Equal", ["n", "five"], ["is_five"]),
                       helper.make_node("Cast", ["is_five"], ["flag"], to=TensorProto.FLOAT),
                       helper.make_node("Mul", ["flag", "lift"], ["bump"]),
                       helper.make_node("Add", ["flat", "bump"], ["scores"])],
                      [numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
                       numpy_helper.from_array(np.array([1], dtype=np.int64), "end"),
                       numpy_helper.from_array(np.array([5], dtype=np.int64), "five"),
                       numpy_helper.from_array(np.array([1000, 0, 0], dtype=np.float32), "lift")])


def test_an_uploaded_graph_runs_only_at_the_batch_sizes_its_check_ran(client):
    """A request of 5 images runs as 4 + 1, so a graph that behaves otherwise at 5 (here its
    logits; as well its memory or its time) never shows it: each image scores as it does alone."""
    response = client.post("/v1/models", data={"name": "batch-five-onnx", "input_size": 32},
                           files={"onnx": ("m.onnx", batch_five_onnx())})
    assert response.status_code == 201, response.text
    served = client.app.state.registry.get("batch-five-onnx")  # its spec as read back from spec.json
    assert served.spec.batch_sizes == served.predictor.batch_sizes == (1, 2, 4, 8, 16, 32)
    photos = [encode(chelsea().rotate(angle)) for angle in (0, 30, 60, 90, 120)]
    together = client.post("/v1/models/batch-five-onnx/predict", files=[upload(photo) for photo in photos]).json()
    for photo, result in zip(photos, together["results"]):
        alone = client.post("/v1/models/batch-five-onnx/predict", files=[upload(photo)]).json()["results"][0]
        assert result["predictions"] == alone["predictions"]
        assert result["predictions"][0]["probability"] < 0.99

    spec_file = client.app.state.registry.storage.models / "batch-five-onnx" / "1" / "spec.json"
    written_before = json.loads(spec_file.read_text())
    del written_before["batch_sizes"]  # a version uploaded before the sizes were kept: checked at 1 and 3 surely
    spec_file.write_text(json.dumps(written_before))
    older = ModelRegistry(client.app.state.registry.storage, max_loaded=1).get("batch-five-onnx")
    assert older.predictor.batch_sizes == (1, 3) and older.predictor.run_sizes(5) == [3, 1, 1]


@pytest.mark.parametrize("through_a_shape, words", [
    (False, "(ConstantOfShape) takes its output's shape from the pixels' values"),
    (True, "(NonZero) is not an operator served from an uploaded file"),
], ids=["value", "nonzero-shape"])
def test_an_onnx_model_whose_sizes_come_from_pixel_values_is_422(client, through_a_shape, words):
    response = client.post("/v1/models", data={"name": "pixel-sized-onnx", "input_size": 32},
                           files={"onnx": ("m.onnx", pixel_sized_onnx(through_a_shape))})
    assert_refused(response, 422, "onnx", words)


def test_an_onnx_graph_must_list_its_nodes_in_the_order_they_run_and_define_no_functions(timing_reference):
    """ONNX Runtime sorts the nodes itself: listed out of order, a size made from the pixels after
    the node that reads it would slip past a check that reads the list in order."""
    graph = onnx.load_from_string(pixel_sized_onnx(through_a_shape=False))
    nodes = list(graph.graph.node)
    reading = next(index for index, node in enumerate(nodes) if node.op_type == "ConstantOfShape")
    graph.graph.ClearField("node")
    graph.graph.node.extend([nodes[reading], *nodes[:reading], *nodes[reading + 1:]])
    with pytest.raises(InvalidRequest, match=r"\(ConstantOfShape\) comes before an input it needs"):
        check(graph.SerializeToString(), timing_reference)
    with_function = onnx.load_from_string(onnx_graph(POOLED + [helper.make_node("Identity", ["flat"], ["scores"])]))
    with_function.functions.append(helper.make_function("", "Twice", ["x"], ["y"], [
        helper.make_node("Add", ["x", "x"], ["y"])], [helper.make_opsetid("", 17)]))
    with pytest.raises(InvalidRequest, match="defines local functions"):
        check(with_function.SerializeToString(), timing_reference)


def test_an_onnx_model_slower_than_the_check_allows_is_422_in_that_time(timing_reference):
    """400 products take seconds here: the check stops at its 1 s."""
    started = time.monotonic()
    with pytest.raises(InvalidRequest, match=r"longer than 1 s on batches of 1, 2, 4, 8, 16 and 32 images"):
        check(slow_onnx(400), timing_reference, seconds=1.0)
    assert time.monotonic() - started < 10
    assert check(slow_onnx(2), timing_reference) == 3


def test_uploads_take_turns_over_all_api_processes(tmp_path):
    """Another API process (here a process holding the shared lock file) keeps this one's upload
    waiting, then 503 once the wait is over; after it lets go, the upload goes through."""
    settings = Settings(data_dir=tmp_path, explain_queue_seconds=0.5)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"lock = open({str(tmp_path / 'upload.lock')!r}, 'a')\n"
                               "fcntl.flock(lock, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as api:
            def send():
                return api.post("/v1/models", data={"name": "tiny", "input_size": 32},
                                files={"onnx": ("m.onnx", onnx_classifier().SerializeToString())})

            started = time.monotonic()
            busy = send()
            assert busy.status_code == 503 and "another model upload" in busy.json()["detail"], busy.text
            assert 0.5 <= time.monotonic() - started < 5
            holder.kill()
            holder.wait()
            assert send().status_code == 201
    finally:
        holder.kill()
        holder.wait()
