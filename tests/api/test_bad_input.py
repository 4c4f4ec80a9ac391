"""Bad input gets a clear 4xx problem+json, and the server keeps serving."""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from core.imaging import crop_box
from schemas.problems import MAX_FIELD_ERRORS, MAX_TEXT_CHARS
from service.app import create_app
from service.limits import RequestSizeLimit
from tests.conftest import MODEL
from support import multipart as multipart_body
from support import (chelsea, decode_png, encode, png_chunk, png_size, png_with_empty_chunks, upload,
                     with_last_scan_repeated)

PREDICT = f"/v1/models/{MODEL}/predict"
EXPLAIN = f"/v1/models/{MODEL}/explain"
CATS = range(281, 294)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares width x height pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def assert_problem(response, status: int, problem_type: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"/problems/{problem_type}" and body["status"] == status
    assert body["detail"] and "Traceback" not in response.text
    return body


def assert_still_serving(client) -> None:
    response = client.post(PREDICT, files=[upload(encode(chelsea()))])
    assert response.status_code == 200
    assert response.json()["results"][0]["predictions"][0]["index"] in CATS


@pytest.mark.parametrize("blob, detail", [
    (b"", "empty"),
    (b"this is not an image at all", "not an image"),
    (encode(chelsea())[:4000], "truncated"),
    (encode(chelsea(), "PNG")[:3000], "truncated"),
    (with_last_scan_repeated(encode(chelsea(), progressive=True), 150), "160 scans; the limit is"),
    (png_with_empty_chunks(200_000), "chunks, the most one of 2400069 bytes may have"),
])
def test_unreadable_files_are_422(client, blob, detail):
    for path in (PREDICT, EXPLAIN):
        body = assert_problem(client.post(path, files=[upload(blob)]), 422, "invalid-image")
        assert detail in body["detail"] and body["detail"].startswith("file 0 ('image.jpg'):")
    assert_still_serving(client)


def test_the_bad_file_is_named_in_a_batch(client):
    files = [upload(encode(chelsea()), "cat.jpg"), upload(b"garbage", "notes.jpg")]
    for path in (PREDICT, EXPLAIN):
        body = assert_problem(client.post(path, files=files), 422, "invalid-image")
        assert body["detail"].startswith("file 1 ('notes.jpg'):"), body
        assert [error["field"] for error in body["errors"]] == ["file.1"]  # for a client to show it by that file


def test_every_bad_file_of_a_batch_is_named_at_once(client):
    """A client dropped the refused file and sent the rest again, once per bad file."""
    # 8000 x 8000 is refused from its header (30000 x 30000 from Pillow's own bomb check, as it opens)
    files = [upload(b"garbage", "notes.jpg"), upload(encode(chelsea()), "cat.jpg"),
             upload(png_declaring(8000, 8000), "large.png"), upload(png_declaring(30000, 30000), "huge.png"),
             upload(b"", "empty.jpg")]
    for path in (PREDICT, EXPLAIN):
        body = assert_problem(client.post(path, files=files), 422, "invalid-image")  # the first file's status
        assert body["detail"].startswith("file 0 ('notes.jpg'): the file is not an image"), body
        said = {error["field"]: (error["status"], error["message"]) for error in body["errors"]}
        assert list(said) == ["file.0", "file.2", "file.3", "file.4"], said
        assert said["file.0"][0] == 422 and said["file.4"] == (422, "file 4 ('empty.jpg'): the file is empty")
        assert said["file.2"][0] == 413 and said["file.2"][1].startswith("file 2 ('large.png'): image is 8000x8000")
        assert said["file.3"][0] == 413 and "declares too many pixels" in said["file.3"][1], said


@pytest.mark.parametrize("width, height", [(30000, 30000), (8000, 8000)])
def test_decompression_bombs_are_refused_before_decoding(client, width, height):
    blob = png_declaring(width, height)
    assert len(blob) < 200
    body = assert_problem(client.post(PREDICT, files=[upload(blob, "bomb.png", "image/png")]), 413,
                          "image-too-large")
    assert "pixels" in body["detail"]
    assert_still_serving(client)


def test_unknown_model_is_404(client):
    for path in ("/v1/models/resnet9000", "/v1/models/resnet9000/predict", "/v1/models/resnet9000/explain"):
        response = client.get(path) if path.count("/") == 3 else client.post(path, files=[upload(encode(chelsea()))])
        body = assert_problem(response, 404, "unknown-model")
        assert "efficientnet_lite0" in body["detail"]


def test_unknown_method_is_422_listing_the_valid_ones(client):
    body = assert_problem(client.post(EXPLAIN, files=[upload(encode(chelsea()))], data={"method": "magic"}),
                          422, "unknown-method")
    assert "gradcam" in body["valid"] and "integrated_gradients" in body["valid"]
    assert "attention" not in body["valid"]  # what this model answers: it has no attention module


def test_unknown_layer_is_422_listing_the_valid_ones(client):
    body = assert_problem(client.post(EXPLAIN, files=[upload(encode(chelsea()))], data={"layer": "conv99"}),
                          422, "unknown-layer")
    assert "head" in body["valid"] and "blocks.3" in body["valid"]
    assert body["errors"][0]["field"] == "layer"


@pytest.mark.parametrize("field", ["method", "layer"])
def test_a_long_value_is_echoed_shortened(client, field):
    """A megabyte of `layer` once came back twice over (detail and errors[].message): 2 MB."""
    response = client.post(EXPLAIN, files=[upload(encode(chelsea()))], data={field: "x" * 1_000_000})
    body = assert_problem(response, 422, f"unknown-{field}")
    assert len(response.content) < 10_000, len(response.content)
    assert len(body["detail"]) == MAX_TEXT_CHARS and "x…x" in body["detail"]
    assert body["errors"][0]["field"] == field and body["errors"][0]["message"] == body["detail"]
    assert "gradcam" in body["valid"] or "head" in body["valid"]


def test_a_body_with_thousands_of_invalid_values_lists_a_bounded_number(client):
    response = client.post("/v1/jobs/activation-maximization",
                           json={"model": MODEL, "target": {"classes": ["a"] * 10_000}, "x" * 100_000: 1})
    body = assert_problem(response, 422, "validation-error")
    assert len(body["errors"]) == MAX_FIELD_ERRORS and len(response.content) < 20_000, len(response.content)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "smoothgrad", "occlusion", "rise"])
def test_a_layer_sent_to_a_method_that_explains_the_input_is_refused_naming_those_that_take_one(client, method):
    """It was dropped: `layer: null` in the answer, a map of the input's pixels all the same."""
    body = assert_problem(client.post(EXPLAIN, files=[upload(encode(chelsea()))],
                                      data={"method": method, "layer": "blocks.3"}), 422, "invalid-request")
    assert body["errors"][0]["field"] == "layer" and f"{method} explains the input's pixels" in body["detail"]
    detail = client.get(f"/v1/models/{MODEL}").json()
    assert body["valid"] == detail["layer_methods"] and "gradcam" in body["valid"] and method not in body["valid"]
    assert set(detail["layer_methods"]) < set(detail["methods"])


def test_cam_only_at_the_classifier_layer(client):
    body = assert_problem(client.post(EXPLAIN, files=[upload(encode(chelsea()))],
                                      data={"method": "cam", "layer": "blocks.3"}), 422, "unknown-layer")
    assert body["valid"] == ["head"]


@pytest.mark.parametrize("target", [1000, 5000])
def test_target_out_of_range_is_422(client, target):
    body = assert_problem(client.post(EXPLAIN, files=[upload(encode(chelsea()))], data={"target": target}),
                          422, "target-out-of-range")
    assert "0..999" in body["detail"]


@pytest.mark.parametrize("target", [-1, 100_000])
def test_a_target_outside_any_model_is_refused_by_the_form(client, target):
    body = assert_problem(client.post(EXPLAIN, files=[upload(encode(chelsea()))], data={"target": target}),
                          422, "validation-error")
    assert body["errors"][0]["field"] == "target.0"  # the first of its values


def test_fields_are_named_alike_by_the_form_and_by_the_routes_checks(client):
    """As `errors[].field` (and the CLI) give them: `steps`, not `body.steps`."""
    bad_steps = client.post(EXPLAIN, files=[upload(encode(chelsea()))], data={"method": "integrated_gradients",
                                                                              "steps": "many"})
    assert assert_problem(bad_steps, 422, "validation-error")["errors"][0]["field"] == "steps"
    assert bad_steps.json()["detail"].startswith("steps: ")
    bad_layer = client.post(EXPLAIN, files=[upload(encode(chelsea()))], data={"layer": "conv99"})
    assert assert_problem(bad_layer, 422, "unknown-layer")["errors"][0]["field"] == "layer"
    nested = client.post("/v1/jobs/activation-maximization", json={"model": MODEL, "target": {"classes": ["a"]}})
    assert assert_problem(nested, 422, "validation-error")["errors"][0]["field"] == "target.classes.0"
    unparsed = client.post("/v1/jobs/fine-tune", content=b"{", headers={"Content-Type": "application/json"})
    assert assert_problem(unparsed, 422, "validation-error")["errors"] == [{"field": "body",
                                                                            "message": "JSON decode error"}]


def test_wrong_number_of_targets_is_422(client):
    files = [upload(encode(chelsea()))] * 3
    assert_problem(client.post(EXPLAIN, files=files, data={"target": [1, 2]}), 422, "invalid-request")


def test_a_list_field_sent_as_a_file_is_422(client):
    """A file part where a comma-listed field belongs is the field's own 422, not a 500."""
    for field in ("target", "outputs"):
        response = client.post(EXPLAIN, files=[upload(encode(chelsea())), (field, ("t.txt", b"281", "text/plain"))])
        assert response.status_code == 422, (field, response.text)


@pytest.mark.parametrize("form, field", [
    ({"top_k": "abc"}, "top_k"), ({"top_k": 0}, "top_k"), ({"top_k": -3}, "top_k"),
    ({"target": "cat"}, "target"), ({"target": "281,cat"}, "target"), ({"target": "1," * 1025}, "target"),
    ({"method": "integrated_gradients", "steps": 0}, "steps"),
    ({"method": "integrated_gradients", "steps": 100000}, "steps"),
    ({"method": "smoothgrad", "samples": 0}, "samples"), ({"method": "smoothgrad", "noise": 3}, "noise"),
    ({"method": "rise", "masks": 8001}, "masks"), ({"method": "rise", "p": 0}, "p"),
    ({"method": "occlusion", "window": 2}, "window"),
])
def test_bad_parameters_are_422_naming_the_field(client, form, field):
    response = client.post(EXPLAIN, files=[upload(encode(chelsea()))], data=form)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert any(field in error["field"] for error in response.json()["errors"])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_that_is_not_finite_is_named_so(client, value):
    """`p=nan` was refused as "should be less than or equal to 1"."""
    response = client.post(EXPLAIN, files=[upload(encode(chelsea()))], data={"method": "rise", "p": value})
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [{"field": "p", "message": "Input should be a finite number"}]


@pytest.mark.parametrize("method, option, value", [
    ("gradcam", "steps", 32), ("cam", "samples", 4), ("integrated_gradients", "noise", 0.1),
    ("smoothgrad", "baseline", "blur"), ("scorecam", "steps", 8), ("smoothgrad", "seed", 3),
    ("rise", "window", 32), ("occlusion", "masks", 64),
])
def test_an_option_the_method_does_not_take_is_422_naming_it(client, method, option, value):
    body = assert_problem(client.post(EXPLAIN, files=[upload(encode(chelsea()))],
                                      data={"method": method, option: value}), 422, "invalid-request")
    assert body["errors"][0]["field"] == option
    assert f"{method} takes no option {option!r}" in body["detail"]


@pytest.mark.parametrize("field", ["step", "foo"])
def test_a_field_no_method_takes_is_422_naming_it_not_dropped(client, field):
    """A misspelled option (`step`) was dropped by the form, and the method ran at its default."""
    body = assert_problem(client.post(EXPLAIN, files=[upload(encode(chelsea()))],
                                      data={"method": "integrated_gradients", field: "4"}), 422, "invalid-request")
    assert body["errors"][0]["field"] == field and f"unknown field {field!r}" in body["detail"]
    assert {"steps", "method", "file", "outputs"} <= set(body["valid"])


@pytest.mark.parametrize("path, files, data, field, valid", [
    (PREDICT, {"file": ("cat.png", b"x")}, {"topk": "1"}, "topk", {"file", "top_k", "resize"}),
    (PREDICT, {"image": ("cat.png", b"x")}, {}, "image", {"file", "top_k", "resize"}),
    ("/v1/datasets", {"file": ("d.zip", b"x")}, {"title": "pets"}, "title", {"file", "name"}),
    ("/v1/models", {"weights": ("w.safetensors", b"x")}, {"name": "m", "architecture": "resnet18", "inputsize": "64"},
     "inputsize", {"weights", "onnx", "input_size"}),
])
def test_a_field_the_route_does_not_take_is_422_naming_it_not_dropped(client, path, files, data, field, valid):
    """`topk=1` gave five classes, and `image=@cat.jpg` a 422 about a missing `file` that did not say why."""
    body = assert_problem(client.post(path, files=files, data=data), 422, "invalid-request")
    assert body["errors"][0]["field"] == field and f"unknown field {field!r}" in body["detail"], body
    assert valid <= set(body["valid"]), body


@pytest.mark.parametrize("path, query", [(PREDICT, "top_k=1"), (EXPLAIN, "method=nonexistent"),
                                         (EXPLAIN, "method=cam&steps=4"), ("/v1/datasets", "name=pets")])
def test_a_query_parameter_is_422_not_dropped(client, path, query):
    """`predict?top_k=1` gave five classes, `explain?method=nonexistent` a Grad-CAM."""
    name = query.split("=")[0]
    body = assert_problem(client.post(f"{path}?{query}", files=[upload(encode(chelsea()))]), 422, "invalid-request")
    assert body["errors"][0]["field"] == name and f"query parameter {name!r}" in body["detail"], body
    assert "from the form (multipart/form-data), not from the URL" in body["detail"]


@pytest.mark.parametrize("path, files, data, field", [
    ("/v1/datasets", [("file", ("a.zip", b"PK")), ("file", ("b.zip", b"PK"))], {}, "file"),
    ("/v1/models", [("onnx", ("a.onnx", b"x")), ("onnx", ("b.onnx", b"y"))], {"name": "m"}, "onnx"),
    (PREDICT, [upload(encode(chelsea()))], {"top_k": ["1", "3"]}, "top_k"),
    (EXPLAIN, [upload(encode(chelsea()))], {"method": ["saliency", "gradcam"]}, "method"),
])
def test_a_field_of_one_value_sent_twice_is_422_not_the_last_kept(client, path, files, data, field):
    """The last was used without a word: two `file` parts to /v1/datasets, a good zip and then
    two bytes, answered that the data set must be an archive."""
    body = assert_problem(client.post(path, files=files, data=data), 422, "invalid-request")
    assert body["errors"][0]["field"] == field and "sent 2 times; it takes one value" in body["detail"], body


@pytest.mark.parametrize("field, value", [("cam_layer", "features"), ("architecture", "resnet18")])
def test_an_onnx_upload_refuses_the_fields_of_a_weights_upload(client, field, value):
    """They were dropped without a word (201)."""
    body = assert_problem(client.post("/v1/models", files={"onnx": ("m.onnx", b"x")}, data={"name": "m", field: value}),
                          422, "invalid-request")
    assert body["errors"][0]["field"] == field and "goes with `weights`" in body["detail"], body


@pytest.mark.parametrize("path", [PREDICT, EXPLAIN])
def test_unknown_resize_is_422_listing_the_valid_ones(client, path):
    body = assert_problem(client.post(path, files=[upload(encode(chelsea()))], data={"resize": "squeeze"}),
                          422, "invalid-request")
    assert body["valid"] == ["crop", "stretch"] and body["errors"][0]["field"] == "resize"


def test_missing_file_is_422(client):
    body = assert_problem(client.post(PREDICT, data={"top_k": 3}), 422, "validation-error")
    assert body["errors"][0]["field"].endswith("file")


def test_a_file_field_sent_as_text_is_422_saying_how_to_send_a_file(client):
    """`curl -F file=cat.jpg` (no @) sends the text: pydantic's words were "Expected UploadFile,
    received: <class 'str'>"."""
    for path, field in ((PREDICT, "file"), ("/v1/models", "onnx"), ("/v1/datasets", "file")):
        body = assert_problem(client.post(path, data={field: "cat.jpg", "name": "text-sent"} if path != PREDICT
                                          else {field: "cat.jpg"}), 422, "validation-error")
        assert f"must be a file, sent as a file part (curl: -F {field}=@PATH), not as text" in body["detail"], body


def test_a_path_no_route_has_is_404_naming_it(client):
    """A client given the URL with /v1 at its end asked for /v1/v1/models: Starlette's "Not Found"."""
    body = assert_problem(client.get("/v1/v1/models"), 404, "not-found")
    assert body["detail"] == "no route is at /v1/v1/models (/v1/ twice: the API's paths start with one; see /docs)"
    assert assert_problem(client.get("/models"), 404, "not-found")["detail"] == \
        "no route is at /models (the API's paths start with /v1/: see /docs)"
    assert assert_problem(client.get("/v1/health/ready"), 404, "not-found")["detail"] == \
        "no route is at /v1/health/ready (see /docs)"  # it starts with /v1/: no word that it does not
    assert len(assert_problem(client.get("/" + "x" * 5000), 404, "not-found")["detail"]) < 300


def test_png_answer_needs_exactly_one_file(client):
    response = client.post(EXPLAIN, files=[upload(encode(chelsea()))] * 2, headers={"Accept": "image/png"})
    assert_problem(response, 422, "invalid-request")


@pytest.fixture(scope="module")
def strict_client(app_settings):
    settings = app_settings(max_file_bytes=60_000, max_request_bytes=200_000, max_files=3,
                        max_request_pixels=1_000_000)
    with TestClient(base_url="http://localhost", app=create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_upload_over_the_request_limit_is_413(strict_client):
    big = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    blob = encode(Image.fromarray(big), "PNG")
    assert len(blob) > 200_000
    body = assert_problem(strict_client.post(PREDICT, files=[upload(blob, "big.png", "image/png")]), 413,
                          "payload-too-large")
    assert "200000" in body["detail"]
    assert_still_serving(strict_client)


def test_a_multipart_body_cut_off_before_its_closing_boundary_is_400(client):
    blob, content_type = multipart_body([("cat.jpg", encode(chelsea()))], {"top_k": 3})
    cut = client.post(PREDICT, content=blob[:len(blob) // 2], headers={"Content-Type": content_type})
    assert "closing boundary" in assert_problem(cut, 400, "bad-request")["detail"]

    def chunks(size: int):  # the delimiter split across two chunks is still found
        for start in range(0, len(blob), size):
            yield blob[start:start + size]
    for size in (7, 4096):
        whole = client.post(PREDICT, content=chunks(size), headers={"Content-Type": content_type})
        assert whole.status_code == 200 and len(whole.json()["results"][0]["predictions"]) == 3, size
    # the closing delimiter's bytes inside a file, not at a line's start, are its data: the body,
    # cut off in the second file, was a 200 for the first alone
    photo = encode(chelsea())
    blob, content_type = multipart_body([("a.jpg", photo + b"--edge--"), ("b.jpg", photo)], boundary="edge")
    cut = client.post(PREDICT, content=blob[:-len(photo) // 2], headers={"Content-Type": content_type})
    assert "closing boundary" in assert_problem(cut, 400, "bad-request")["detail"]


def test_chunked_upload_over_the_request_limit_is_413(strict_client):
    blob, content_type = multipart_body([("big.bin", bytes(300_000))])

    def chunks():
        for start in range(0, len(blob), 16_384):
            yield blob[start:start + 16_384]

    response = strict_client.post(PREDICT, content=chunks(), headers={"Content-Type": content_type})
    assert "content-length" not in response.request.headers
    body = assert_problem(response, 413, "payload-too-large")
    assert "200000" in body["detail"]
    assert_still_serving(strict_client)


def test_file_over_the_file_limit_is_413(strict_client):
    noisy = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    blob = encode(Image.fromarray(noisy), "PNG")
    assert 60_000 < len(blob) < 200_000
    assert_problem(strict_client.post(PREDICT, files=[upload(blob, "noisy.png", "image/png")]), 413,
                   "payload-too-large")
    # every file over it is named by its field, as a refused image is: the 413 named the first alone, by no field
    over = encode(Image.fromarray(noisy[:150, :150]), "PNG")
    assert 60_000 < len(over) < 80_000  # two, and a small one, stay under the request's 200 000
    small = encode(chelsea().resize((64, 43)))
    body = assert_problem(strict_client.post(PREDICT, files=[upload(small), upload(over, "a.png", "image/png"),
                                                             upload(over, "b.png", "image/png")]),
                          413, "payload-too-large")
    assert [error["field"] for error in body["errors"]] == ["file.1", "file.2"], body
    assert body["detail"] == f"file 1 ('a.png') is {len(over)} bytes; the limit is 60000", body


def test_images_declaring_too_many_pixels_together_are_413(strict_client):
    """Two small files (a flat colour compresses ~700:1) that decode to 1.28 M pixels, over
    the request's 1 M: refused from the headers, before any decoding."""
    flat = encode(Image.new("RGB", (800, 800), (120, 30, 200)), "PNG")
    assert len(flat) < 10_000
    body = assert_problem(strict_client.post(PREDICT, files=[upload(flat, "a.png", "image/png")] * 2), 413,
                          "image-too-large")
    assert "1280000 pixels together" in body["detail"] and "1000000" in body["detail"]
    assert strict_client.post(PREDICT, files=[upload(flat, "a.png", "image/png")]).status_code == 200


def test_too_many_files_is_413(strict_client):
    small = encode(chelsea().resize((64, 43)))
    body = assert_problem(strict_client.post(PREDICT, files=[upload(small)] * 4), 413, "too-many-files")
    assert "limit is 3" in body["detail"]
    assert strict_client.post(PREDICT, files=[upload(small)] * 3).status_code == 200


def cmyk_jpeg() -> bytes:
    return encode(chelsea().convert("CMYK"), "JPEG")


def sixteen_bit_png() -> bytes:
    grey = np.asarray(chelsea().convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


def palette_png() -> bytes:
    return encode(chelsea().convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG")


def rgba_png() -> bytes:
    image = chelsea().convert("RGBA")
    image.putalpha(200)
    return encode(image, "PNG")


@pytest.mark.parametrize("name, blob", [
    ("grey.jpg", encode(chelsea().convert("L"))),
    ("rgba.png", rgba_png()),
    ("palette.png", palette_png()),
    ("grey16.png", sixteen_bit_png()),
    ("cmyk.jpg", cmyk_jpeg()),
    ("grey-alpha.png", encode(chelsea().convert("LA"), "PNG")),
    ("image.webp", encode(chelsea(), "WEBP")),
    ("image.bmp", encode(chelsea(), "BMP")),
])
def test_other_modes_are_converted(client, name, blob):
    response = client.post(EXPLAIN, files=[upload(blob, name, "application/octet-stream")], data={"method": "cam"})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["predictions"][0]["index"] in CATS
    assert png_size(base64.b64decode(result["explanation"]["heatmap_png"])) == (451, 300)


def test_sixteen_bit_is_scaled_not_clipped(client):
    """A 16-bit grey photo must predict like its 8-bit version (clipping would make it white)."""
    eight = client.post(PREDICT, files=[upload(encode(chelsea().convert("L"), "PNG"))]).json()
    sixteen = client.post(PREDICT, files=[upload(sixteen_bit_png())]).json()
    assert eight["results"][0]["predictions"][0]["index"] == sixteen["results"][0]["predictions"][0]["index"]
    assert abs(eight["results"][0]["predictions"][0]["probability"]
               - sixteen["results"][0]["predictions"][0]["probability"]) < 0.02


def test_exif_orientation_is_honoured(client):
    stored = chelsea().rotate(90, expand=True)  # 300 x 451 on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display" -> upright 451 x 300
    blob = encode(stored, "JPEG", exif=exif.tobytes())
    response = client.post(EXPLAIN, files=[upload(blob)], data={"method": "cam"})
    assert response.status_code == 200
    result = response.json()["results"][0]
    assert png_size(base64.b64decode(result["explanation"]["heatmap_png"])) == (451, 300)
    assert result["predictions"][0]["index"] in CATS
    # Outside the centre crop the overlay is the image itself: it must be chelsea upright,
    # not turned the other way.
    overlay = decode_png(base64.b64decode(result["explanation"]["overlay"])).astype(int)
    left, _, right, _ = crop_box(451, 300, client.app.state.registry.spec(MODEL)).rounded()
    outside = np.r_[0:left, right:451]
    upright = np.asarray(chelsea(), dtype=int)
    wrong_way = np.asarray(chelsea().rotate(180), dtype=int)
    error_upright = np.abs(overlay[:, outside] - upright[:, outside]).mean()
    error_wrong_way = np.abs(overlay[:, outside] - wrong_way[:, outside]).mean()
    assert error_upright < 6 and error_wrong_way > 5 * error_upright


def test_faithfulness_needs_a_json_answer(client):
    response = client.post(EXPLAIN, files=[upload(encode(chelsea()))], data={"faithfulness": "true"},
                           headers={"Accept": "image/png"})
    assert assert_problem(response, 422, "invalid-request")["errors"][0]["field"] == "faithfulness"


@pytest.mark.parametrize("setting", [{"max_concurrent_explanations": 0}, {"explain_queue_seconds": 0}])
def test_explanation_slot_settings_must_allow_explanations(app_settings, setting):
    with pytest.raises(ValueError):
        app_settings(**setting)


def test_a_content_length_of_thousands_of_digits_is_413_not_500():
    inner = Starlette(routes=[Route("/", lambda request: PlainTextResponse("read"), methods=["POST"])])

    async def call() -> list[dict]:
        sent: list[dict] = []
        scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"9" * 5000)],
                 "query_string": b"", "root_path": "", "scheme": "http", "server": ("t", 80), "http_version": "1.1"}

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await RequestSizeLimit(inner, max_bytes=1000)(scope, receive, send)
        return sent

    sent = asyncio.run(call())
    assert sent[0]["status"] == 413 and b"over 10**18" in sent[1]["body"]


def test_the_minimum_body_rate_counts_waiting_for_the_client_not_the_servers_own_delays():
    """A client that sends its 30 bytes at once, read by a server busy for 2 s between reads, is
    not cut off at 10 bytes/s: only the time spent waiting for the client counts."""
    parts = [{"type": "http.request", "body": b"x" * 10, "more_body": index < 2} for index in range(3)]

    async def slow_reader(scope, receive, send) -> None:
        read = 0
        while True:
            message = await receive()
            read += len(message["body"])
            if not message["more_body"]:
                break
            await asyncio.sleep(2)  # the server's own delay: the client's bytes are already there
        await PlainTextResponse(f"read {read}")(scope, receive, send)

    async def call() -> list[dict]:
        sent: list[dict] = []
        scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}

        async def receive() -> dict:
            return parts.pop(0)

        async def send(message: dict) -> None:
            sent.append(message)

        await RequestSizeLimit(slow_reader, max_bytes=1000, idle_seconds=0.5, min_bytes_per_second=10)(
            scope, receive, send)
        return sent

    sent = asyncio.run(call())
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"read 30"


@pytest.mark.parametrize("method, path, content_type", [
    ("POST", "/v1/jobs/activation-maximization", "application/json"),
    ("PUT", "/v1/models/efficientnet_lite0/default", "application/json"),  # was let through up to 50 MB
    ("PUT", "/v1/models/efficientnet_lite0/default", None),  # FastAPI reads an untyped body as JSON
    ("PUT", "/v1/models/efficientnet_lite0/default", "application/merge-patch+json")])
def test_a_json_body_over_a_mebibyte_is_413_before_it_is_parsed(client, method, path, content_type):
    """Parsing 48 MB of JSON held the event loop for 2 s; a job's real body is a few KB."""
    body = b'{"model": "efficientnet_lite0", "x": [' + b"{}," * (2 * 1024**2 // 3) + b"{}]}"
    response = client.request(method, path, content=body,
                              headers={"Content-Type": content_type} if content_type else {})
    assert response.status_code == 413 and "the limit is 1048576" in response.json()["detail"], response.text
