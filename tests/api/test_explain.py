"""The explain contract over HTTP, for every method, on real photos."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from fastapi.testclient import TestClient
from threadpoolctl import threadpool_info

from core import pipeline
from core.encoding import MEDIA_TYPES
from core.explain import METHODS
from core.explain.faithfulness import deletion_and_insertion
from core.imaging import crop_box, decode_image, preprocess
from service.app import create_app
from service.negotiation import preferred_image
from tests.conftest import MODEL
from support import chelsea, coffee, decode_picture, decode_png, encode, foolbox_imagenet_photos, png_size, upload

FAST_OPTIONS = {"integrated_gradients": {"steps": 8}, "smoothgrad": {"samples": 4}, "rise": {"masks": 64},
                "occlusion": {"window": 56, "stride": 56}}


@pytest.fixture(scope="module")
def chelsea_jpeg():
    return encode(chelsea())


def explain(client, files, **form):
    return client.post(f"/v1/models/{MODEL}/explain", files=files, data=form)


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"attention"}))
def test_every_method_honours_the_contract(client, chelsea_jpeg, method):
    if method == "scorecam":
        form = {"method": method, "layer": "blocks.15"}  # 320 channels: a few seconds, not 1280
    else:
        form = {"method": method, **FAST_OPTIONS.get(method, {})}
    response = explain(client, [upload(chelsea_jpeg)], **form)
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    explanation = result["explanation"]
    assert explanation["method"] == method
    assert explanation["target"]["index"] == result["predictions"][0]["index"]
    heatmap = decode_picture(base64.b64decode(explanation["heatmap_png"]), "png")
    overlay = decode_picture(base64.b64decode(explanation["overlay"]), "jpeg")  # the default
    assert explanation["overlay_format"] == "jpeg"
    assert heatmap.shape == (300, 451) and heatmap.dtype == np.uint8  # grey, the upload's size
    assert overlay.shape == (300, 451, 3)
    left, top, right, bottom = crop_box(451, 300, client.app.state.registry.spec(MODEL)).rounded()
    assert heatmap.max() == 255
    assert heatmap[:, :left].max() == 0 and heatmap[:, right:].max() == 0  # outside the centre crop
    assert explanation["crop"] == {"left": left, "top": top, "right": right, "bottom": bottom}
    assert set(explanation["timings_ms"]) == {"preprocess", "model", "render"}


@pytest.mark.parametrize("width, height", [(1, 1), (600, 2), (2, 600), (3000, 1)])
def test_tiny_and_thin_images_get_a_full_heatmap(client, width, height):
    image = chelsea().resize((width, height))
    body = explain(client, [upload(encode(image, "PNG"), "thin.png", "image/png")], method="gradcam").json()
    explanation = body["results"][0]["explanation"]
    heatmap = decode_png(base64.b64decode(explanation["heatmap_png"]))
    overlay = decode_png(base64.b64decode(explanation["overlay"]))
    assert heatmap.shape == (height, width) and overlay.shape == (height, width, 3)
    assert heatmap.max() == 255


def test_a_large_jpegs_pictures_come_at_the_scale_it_was_decoded_at_and_predict_agrees(client):
    """2400 x 1600 decodes at half its size (core.imaging.needed_sides), for predict as for explain."""
    photo = encode(chelsea().resize((2400, 1600), Image.Resampling.BICUBIC))
    explanation = explain(client, [upload(photo)], method="cam").json()["results"][0]
    assert decode_png(base64.b64decode(explanation["explanation"]["heatmap_png"])).shape == (800, 1200)
    # the crop in the heatmap's pixels: 1200 x 800's centre crop, not 2400 x 1600's
    left, top, right, bottom = crop_box(1200, 800, client.app.state.registry.spec(MODEL)).rounded()
    assert explanation["explanation"]["crop"] == {"left": left, "top": top, "right": right, "bottom": bottom}
    assert decode_picture(base64.b64decode(explanation["explanation"]["overlay"]), "jpeg").shape == (800, 1200, 3)
    predicted = client.post(f"/v1/models/{MODEL}/predict", files=[upload(photo)]).json()["results"][0]
    top, explained_top = predicted["predictions"][0], explanation["predictions"][0]
    assert top["index"] == explained_top["index"] in range(281, 286)
    assert top["probability"] == pytest.approx(explained_top["probability"], abs=1e-5)


def test_stretch_explains_the_whole_image(client, chelsea_jpeg):
    """Nothing is cropped, so the map reaches the left and right edges the centre crop cuts."""
    body = explain(client, [upload(chelsea_jpeg)], method="gradcam", resize="stretch").json()
    heatmap = decode_png(base64.b64decode(body["results"][0]["explanation"]["heatmap_png"]))
    assert heatmap.shape == (300, 451)
    assert heatmap[:, :5].max() > 0 and heatmap[:, -5:].max() > 0
    assert body["results"][0]["explanation"]["crop"] == {"left": 0, "top": 0, "right": 451, "bottom": 300}
    assert body["results"][0]["predictions"][0]["index"] in range(281, 286)


def test_gradcam_on_a_batch_with_a_target_per_image(client, chelsea_jpeg):
    files = [upload(chelsea_jpeg), upload(encode(chelsea().transpose(0)))]
    body = explain(client, files, method="gradcam", target=[281, 285]).json()
    assert [r["explanation"]["target"]["index"] for r in body["results"]] == [281, 285]
    assert body["results"][0]["explanation"]["target"]["label"] == "tabby, tabby cat"
    listed = explain(client, files, method="gradcam", target=["281, 285"]).json()  # as a comma list
    assert [r["explanation"]["target"]["index"] for r in listed["results"]] == [281, 285]


def test_one_target_applies_to_every_image(client, chelsea_jpeg):
    body = explain(client, [upload(chelsea_jpeg)] * 2, method="gradcam++", target=[283]).json()
    assert [r["explanation"]["target"]["index"] for r in body["results"]] == [283, 283]


def test_different_targets_give_different_maps(client, chelsea_jpeg):
    maps = []
    for target in (282, 967):  # tiger cat vs espresso
        body = explain(client, [upload(chelsea_jpeg)], method="gradcam", target=[target]).json()
        maps.append(decode_png(base64.b64decode(body["results"][0]["explanation"]["heatmap_png"])))
    assert np.abs(maps[0].astype(int) - maps[1].astype(int)).mean() > 10


def test_layer_can_be_chosen(client, chelsea_jpeg):
    """The map comes from the chosen layer: blocks.10 works at 14x14, the head at 7x7."""
    sides = {}
    for layer in ("blocks.10", "head"):
        body = explain(client, [upload(chelsea_jpeg)], method="gradcam", layer=layer, outputs="map").json()
        explanation = body["results"][0]["explanation"]
        assert explanation["layer"] == layer
        sides[layer] = np.asarray(explanation["map"]).shape
    assert sides == {"blocks.10": (14, 14), "head": (7, 7)}


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_gradient_cams_at_the_classifier_layer_come_from_onnx_runtime_and_match_torch(client, chelsea_jpeg, method):
    """With global average pooling + linear head, the target logit's gradient at the CAM layer is
    the class weights / HW everywhere, so these maps follow from the feature map of the ONNX
    Runtime forward, with no torch; Grad-CAM's is then CAM's. Below that layer they run on torch."""
    model = client.app.state.registry.get(MODEL)
    torch_forwards = []
    counting = model.network.register_forward_hook(lambda *_: torch_forwards.append(1))
    try:
        maps = {name: np.asarray(explain(client, [upload(chelsea_jpeg)], method=name, outputs="map")
                                 .json()["results"][0]["explanation"]["map"]) for name in ("cam", method)}
        assert not torch_forwards
        assert explain(client, [upload(chelsea_jpeg)], method=method, layer="blocks.15").status_code == 200
        assert len(torch_forwards) == 1
    finally:
        counting.remove()
    if method == "gradcam":
        np.testing.assert_allclose(maps[method], maps["cam"], atol=1e-4)
    inputs = torch.from_numpy(preprocess([decode_image(chelsea_jpeg, 10**8)], model.spec)[0])
    with_gradients = METHODS[method](model.network, inputs, None, model.spec.cam_layer)
    assert maps[method].shape == with_gradients.maps[0].shape == (7, 7)
    np.testing.assert_allclose(maps[method], with_gradients.maps[0], atol=1e-3)
    assert pipeline.explain_cost(model, method, None, {}, 1) == 1 < pipeline.explain_cost(model, method, "blocks.15", {}, 1)


def test_integrated_gradients_baselines(client, chelsea_jpeg):
    heatmaps = []
    for baseline in ("black", "blur", "uniform"):
        response = explain(client, [upload(chelsea_jpeg)], method="integrated_gradients", steps=8, baseline=baseline)
        assert response.status_code == 200, response.text
        heatmaps.append(response.json()["results"][0]["explanation"]["heatmap_png"])
    assert len(set(heatmaps)) == 3
    bad = explain(client, [upload(chelsea_jpeg)], method="integrated_gradients", baseline="grey")
    assert bad.status_code == 422 and "black" in bad.json()["detail"]


@pytest.mark.parametrize("image_format", ["png", "jpeg", "webp"])
def test_accept_an_image_type_returns_the_overlay_itself(client, chelsea_jpeg, image_format):
    response = client.post(f"/v1/models/{MODEL}/explain", files=[upload(chelsea_jpeg)],
                           data={"method": "cam"}, headers={"Accept": f"image/{image_format}"})
    assert response.status_code == 200
    assert response.headers["content-type"] == f"image/{image_format}"
    assert decode_picture(response.content, image_format).shape == (300, 451, 3)


@pytest.mark.parametrize("image_format", ["png", "jpeg", "webp"])
def test_overlay_format_chooses_the_overlay_file_and_all_look_alike(client, image_format):
    """The lossy overlays are the lossless one within a few levels on average, and far smaller."""
    photo = upload((foolbox_imagenet_photos()[0][0]).read_bytes())  # 512 x 512
    answers = {name: explain(client, [photo], method="cam", overlay_format=name) for name in ("png", image_format)}
    overlays = {name: decode_picture(base64.b64decode(answer.json()["results"][0]["explanation"]["overlay"]), name)
                for name, answer in answers.items()}
    assert answers[image_format].json()["results"][0]["explanation"]["overlay_format"] == image_format
    assert np.abs(overlays[image_format].astype(int) - overlays["png"]).mean() < 4
    if image_format != "png":
        assert len(answers[image_format].content) < len(answers["png"].content) / 3


def test_the_default_explain_answer_for_a_512_pixel_photo_stays_under_100_kb(client):
    photos = [path.read_bytes() for path, _ in foolbox_imagenet_photos()]
    square = [photo for photo in photos if png_size(photo) == (512, 512)]
    assert len(square) == 19
    sizes = [len(explain(client, [upload(photo)], method="cam").content) for photo in square]
    assert max(sizes) < 100_000, sorted(sizes)[-3:]


def test_a_heatmap_sent_alone_has_the_same_pixels_as_beside_an_overlay(client, chelsea_jpeg):
    both, alone = (explain(client, [upload(chelsea_jpeg)], method="cam", **fields).json()["results"][0]["explanation"]
                   for fields in ({}, {"outputs": "heatmap"}))
    assert alone["overlay"] is None and both["overlay"] is not None
    assert np.array_equal(decode_png(base64.b64decode(alone["heatmap_png"])),
                          decode_png(base64.b64decode(both["heatmap_png"])))


def test_the_server_runs_numpys_blas_on_one_thread(client):
    assert client.get("/readyz").status_code == 200
    # numpy's own (the tests load more, such as scipy's, after the app has started)
    blas = [library for library in threadpool_info()
            if library["user_api"] == "blas" and "numpy" in Path(library["filepath"]).parts[-2]]
    assert blas and all(library["num_threads"] == 1 for library in blas), blas


def test_an_unknown_overlay_format_is_422(client, chelsea_jpeg):
    response = explain(client, [upload(chelsea_jpeg)], method="cam", overlay_format="gif")
    assert response.status_code == 422 and response.json()["errors"][0]["field"].endswith("overlay_format")


def test_an_overlay_longer_than_its_format_can_hold_is_422_and_png_holds_it(client):
    thin = encode(Image.new("RGB", (20_000, 2), (200, 120, 40)), "PNG")  # WebP holds 16383 pixels a side
    refused = explain(client, [upload(thin, "thin.png", "image/png")], method="cam", overlay_format="webp")
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"].endswith("overlay_format")
    assert explain(client, [upload(thin, "thin.png", "image/png")], method="cam", overlay_format="png").status_code == 200


def test_explanations_are_repeatable(client, chelsea_jpeg):
    first, second = (explain(client, [upload(chelsea_jpeg)], method="smoothgrad", samples=4).json()
                     for _ in range(2))
    assert first["results"][0]["explanation"]["heatmap_png"] == second["results"][0]["explanation"]["heatmap_png"]


def test_attention_needs_spatial_attention(client, chelsea_jpeg):
    response = explain(client, [upload(chelsea_jpeg)], method="attention")
    assert response.status_code == 422
    body = response.json()
    assert body["type"] == "/problems/unsupported-method" and "gradcam" in body["valid"]
    assert "attention" not in body["valid"]
    assert client.get(f"/v1/models/{MODEL}").json()["attention"] == []


def test_outputs_can_be_chosen(client, chelsea_jpeg):
    body = explain(client, [upload(chelsea_jpeg)], method="gradcam", outputs=["map"]).json()
    explanation = body["results"][0]["explanation"]
    assert explanation["heatmap_png"] is None and explanation["overlay"] is None
    grid = np.asarray(explanation["map"])
    assert grid.shape == (7, 7) and grid.min() == 0.0 and grid.max() == 1.0  # head: 224 / 32
    body = explain(client, [upload(chelsea_jpeg)], method="saliency", outputs=["heatmap", "map"]).json()
    explanation = body["results"][0]["explanation"]
    assert explanation["overlay"] is None and np.asarray(explanation["map"]).shape == (224, 224)
    assert png_size(base64.b64decode(explanation["heatmap_png"])) == (451, 300)
    listed = explain(client, [upload(chelsea_jpeg)], method="gradcam", outputs=["heatmap, map"]).json()
    explanation = listed["results"][0]["explanation"]  # as a comma list: the same as the field repeated
    assert explanation["overlay"] is None and explanation["heatmap_png"] and explanation["map"]
    bad = explain(client, [upload(chelsea_jpeg)], outputs=["movie"])
    assert bad.status_code == 422 and bad.json()["valid"] == ["heatmap", "overlay", "map"]
    for nothing in ([""], [" , "]):  # not the default: a client that asked for less would get more
        empty = explain(client, [upload(chelsea_jpeg)], outputs=nothing)
        assert empty.status_code == 422 and "names nothing" in empty.json()["detail"], nothing


def onnx_runs(model, monkeypatch, outputs=("logits",)) -> list[int]:
    """The batch sizes of the model's ONNX Runtime runs for `outputs` from now on."""
    sizes: list[int] = []
    run = model.predictor.run_batches

    def counted(wanted, batches):
        if wanted == outputs:
            sizes.append(sum(len(batch) for batch in batches))
        return run(wanted, batches)

    monkeypatch.setattr(model.predictor, "run_batches", counted)
    return sizes


def test_scorecam_scored_on_onnx_runtime_matches_torch(client, monkeypatch):
    """On CPU the pipeline scores Score-CAM's masked inputs with the model's ONNX Runtime session."""
    model = client.app.state.registry.get(MODEL)
    image = chelsea()
    inputs = torch.from_numpy(preprocess([image], model.spec)[0])
    by_torch = METHODS["scorecam"](model.network, inputs, None, "blocks.15").maps[0]
    scored = onnx_runs(model, monkeypatch)
    served = pipeline.explain(model, [image], "scorecam", layer="blocks.15", outputs=("map",))[0]
    assert sum(scored) == 320  # one masked input per channel of blocks.15
    assert np.abs(np.asarray(served.explanation.map) - by_torch).max() < 1e-4


def test_rise_is_scored_on_onnx_runtime_in_large_batches_without_the_model_lock(client, monkeypatch):
    """rise needs only logits: the service scores its masked inputs on the model's ONNX Runtime
    session, 128 per call, and does not wait for the lock that guards the torch network."""
    model = client.app.state.registry.get(MODEL)
    image = chelsea()
    inputs = torch.from_numpy(preprocess([image], model.spec)[0])
    by_torch = METHODS["rise"](model.network, inputs, None, masks=130, input_mean=model.spec.mean,
                               input_std=model.spec.std).maps[0]
    scored = onnx_runs(model, monkeypatch)
    worker = ThreadPoolExecutor(1)
    with model.lock:  # as if another request were running a torch method
        future = worker.submit(pipeline.explain, model, [image], "rise", options={"masks": 130}, outputs=("map",))
        served = future.result(timeout=120)[0]
    worker.shutdown()
    assert scored == [1, 128, 2]  # the image itself, then its 130 masked copies
    assert np.abs(np.asarray(served.explanation.map) - by_torch).max() < 1e-3


def test_cam_from_the_served_onnx_forward_matches_cam_from_torch(client, monkeypatch):
    """One CAM explainer, two feature sources: the service's (the ONNX Runtime forward that makes
    the prediction) and a torch forward with the layer captured."""
    model = client.app.state.registry.get(MODEL)
    images = [chelsea(), coffee()]
    inputs = torch.from_numpy(preprocess(images, model.spec)[0])
    by_torch = METHODS["cam"](model.network, inputs, None, model.spec.cam_layer,
                              classifier=model.spec.classifier_layer)
    onnx_batches = onnx_runs(model, monkeypatch, ("logits", "features"))
    served = pipeline.explain(model, images, "cam", outputs=("map",))
    assert onnx_batches == [2]
    for index, result in enumerate(served):
        assert result.explanation.target.index == int(by_torch.targets[index])
        assert np.abs(np.asarray(result.explanation.map) - by_torch.maps[index]).max() < 2e-4


@pytest.mark.parametrize("accept, image", [
    ("image/png", "png"), ("IMAGE/PNG", "png"), ("application/json, image/png", None),
    ("application/json, image/jpeg, image/png, image/webp", None), ("application/json;q=0.5, image/*", "png"),
    ("image/png;q=0", None), ("application/json;q=0.9, image/png;q=0.5", None),
    ("image/png;q=0.8, application/json;q=0.5", "png"), ("", None), ("*/*", None), ("image/png;q=x", None),
    ("image/webp", "webp"), ("image/jpeg;q=0.5, image/webp;q=0.9", "webp"), ("image/png, image/jpeg", "png"),
    ("image/*", "png"), ("image/png;q=0, image/*", "jpeg"), ("application/*, image/*;q=0.5", None),
    ("*/*, image/webp;q=0.5", None), ("image/webp, */*;q=0.1", "webp"),
    # JSON refused, images allowed through */*: JSON was the answer
    ("application/json;q=0, */*", "png"), ("*/*;q=0.1, application/json;q=0", "png"),
    ("image/png;q=0, application/json;q=0, */*", "jpeg"),
])
def test_accept_header_negotiation(accept, image):
    assert preferred_image(accept, MEDIA_TYPES) == image


def test_an_image_answer_that_cannot_carry_the_request_falls_back_to_json_where_it_is_accepted(client, chelsea_jpeg):
    """A client generated from the OpenAPI schema sends every type the route lists: it got the PNG
    for one file and a 422 for two."""
    generated = "application/json, image/jpeg, image/png, image/webp"
    for files, fields in (([chelsea_jpeg], {}), ([chelsea_jpeg] * 2, {}), ([chelsea_jpeg], {"outputs": "map"})):
        answer = client.post(f"/v1/models/{MODEL}/explain", files=[upload(blob) for blob in files],
                             data={"method": "cam", **fields}, headers={"Accept": generated})
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json", answer.text
        assert len(answer.json()["results"]) == len(files) and answer.headers["vary"] == "Accept"
    prefers_images = "image/webp, application/json;q=0.5"
    one = client.post(f"/v1/models/{MODEL}/explain", files=[upload(chelsea_jpeg)], data={"method": "cam"},
                      headers={"Accept": prefers_images})
    assert one.headers["content-type"] == "image/webp" and one.headers["vary"] == "Accept"
    two = client.post(f"/v1/models/{MODEL}/explain", files=[upload(chelsea_jpeg)] * 2, data={"method": "cam"},
                      headers={"Accept": prefers_images})
    assert two.status_code == 200 and two.headers["content-type"] == "application/json", two.text


def test_an_accept_header_that_allows_nothing_a_route_answers_is_406(client, chelsea_jpeg):
    for path, accept in ((f"/v1/models/{MODEL}/predict", "image/png"), (f"/v1/models/{MODEL}/explain", "image/gif"),
                         (f"/v1/models/{MODEL}/explain", "text/html, application/json;q=0")):
        refused = client.post(path, files=[upload(chelsea_jpeg)], headers={"Accept": accept})
        assert refused.status_code == 406, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == "/problems/not-acceptable" and "application/json" in refused.json()["detail"]
    assert client.get("/v1/models", headers={"Accept": "text/csv"}).status_code == 406
    artifact = client.get("/v1/jobs/0123456789abcdef/artifacts/map.png", headers={"Accept": "image/png"})
    assert artifact.status_code == 404, artifact.text  # a file of any type: no Accept is refused
    for accept in ("application/*", "text/html, */*;q=0.1", "application/json; charset=utf-8", ""):
        answer = client.post(f"/v1/models/{MODEL}/predict", files=[upload(chelsea_jpeg)], headers={"Accept": accept})
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json", accept
    overlay = client.post(f"/v1/models/{MODEL}/explain", files=[upload(chelsea_jpeg)], data={"method": "cam"},
                          headers={"Accept": "image/*"})
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"


def test_the_default_outputs_are_a_setting(app_settings, chelsea_jpeg):
    settings = app_settings(explain_outputs=("heatmap",))
    with TestClient(base_url="http://localhost", app=create_app(settings)) as heatmap_only:
        explanation = explain(heatmap_only, [upload(chelsea_jpeg)], method="cam").json()["results"][0]["explanation"]
    assert explanation["heatmap_png"] and explanation["overlay"] is None
    with pytest.raises(ValueError, match="explain_outputs"):
        app_settings(explain_outputs=("thumbnail",))


def test_faithfulness_scores_gradcam_above_its_own_inverted_map(client, chelsea_jpeg):
    photos = [chelsea_jpeg, encode(coffee())]
    body = explain(client, [upload(photo) for photo in photos], method="gradcam", faithfulness="true",
                   outputs="map").json()
    model = client.app.state.registry.get(MODEL)
    inputs = torch.from_numpy(preprocess([decode_image(photo, 10**8) for photo in photos], model.spec)[0])
    for index, result in enumerate(body["results"]):
        explanation = result["explanation"]
        scores = explanation["faithfulness"]
        assert scores["steps"] == 16 and 0 <= scores["deletion"] <= 1 and 0 <= scores["insertion"] <= 1
        assert "faithfulness" in explanation["timings_ms"]
        inverted_map = 1 - np.asarray(explanation["map"])
        inverted = deletion_and_insertion(pipeline.onnx_scorer(model), inputs[index], inverted_map,
                                          explanation["target"]["index"], model.spec.mean, model.spec.std)
        assert scores["deletion"] < inverted.deletion and scores["insertion"] > inverted.insertion
    plain = explain(client, [upload(chelsea_jpeg)], method="gradcam", outputs="map").json()
    assert plain["results"][0]["explanation"]["faithfulness"] is None
