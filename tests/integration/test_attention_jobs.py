"""Fine-tuning with attention modules end to end (real Redis, real Celery worker, real API): the
served model lists its attention modules and methods, `attention` explanations follow the usual
contract where the model has spatial attention and are refused where it has none, and a learned
spatial attention map concentrates on the region that holds the class evidence."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from support import (SHAPE_CLASSES, decode_png, encode, evidence_left_archive, evidence_left_image, png_size,
                     shape_image, shapes_archive, upload)
from tests.integration.conftest import wait_for


def create_dataset(api, archive: bytes, name: str) -> dict:
    created = api.post("/v1/datasets", files=[upload(archive, f"{name}.zip", "application/zip")], data={"name": name})
    assert created.status_code == 201, created.text
    return created.json()


def run_fine_tune(api, body: dict, timeout: float = 600) -> tuple[dict, float]:
    started = time.perf_counter()
    response = api.post("/v1/jobs/fine-tune", json=body)
    assert response.status_code == 202, response.text
    done = wait_for(api, response.json()["id"], ("succeeded", "failed", "cancelled"), timeout=timeout)
    assert done["state"] == "succeeded", done
    return done, time.perf_counter() - started


def explain(api, model: str, files: list, **form: object):
    return api.post(f"/v1/models/{model}/explain", files=files, data={"method": "attention", **form})


# --- (a) every attention type: what the served model says about itself, and `attention` maps -------------

@pytest.fixture(scope="module")
def shapes_dataset(api, workers):
    workers()
    dataset = create_dataset(api, shapes_archive(per_class=10, seed=5), "attention-shapes")
    assert dataset["classes"] == sorted(SHAPE_CLASSES)
    return dataset


# attention type -> attention_stages; cbam goes after two stages to show that every module is listed
ATTENTION_RUNS = {"none": 1, "se": 1, "spatial": 1, "cbam": 2}


@pytest.mark.parametrize("attention", list(ATTENTION_RUNS))
def test_fine_tuned_model_lists_its_attention_and_answers_attention_maps_only_with_spatial_attention(
        api, workers, shapes_dataset, attention):
    workers()
    stages = ATTENTION_RUNS[attention]
    name = f"shapes-{attention}"
    done, seconds = run_fine_tune(api, {
        "base_model": "efficientnet_lite0", "dataset_id": shapes_dataset["id"], "output_model": name,
        "strategy": "fine_tune", "epochs": 3, "batch_size": 8, "input_size": 64, "lr": 0.01,
        "backbone_lr": 0.001, "unfreeze_blocks": 2, "early_stopping_patience": 3, "seed": 1,
        "attention": attention, "attention_stages": stages,
        "augmentation": {"rotation": 5, "zoom": 0.05, "shear": 0, "color_jitter": 0.05}})
    metrics = done["result"]["metrics"]
    print(f"\nfine-tune attention={attention} stages={stages}: {seconds:.1f} s, val accuracy "
          f"{metrics['val_accuracy']:.2f} (per epoch {[round(h['val_accuracy'], 2) for h in metrics['history']]})")

    detail = api.get(f"/v1/models/{name}")
    assert detail.status_code == 200, detail.text
    detail = detail.json()
    modules = ["attention.after_head", "attention.after_block_15"][:stages] if attention != "none" else []
    assert detail["attention"] == modules
    assert detail["default_layer"] == ("attention.after_head" if modules else "head")
    has_spatial = attention in ("spatial", "cbam")
    gates = [f"{module}.spatial.gate" for module in modules] if has_spatial else []
    assert ("attention" in detail["methods"]) == has_spatial
    assert "cam" in detail["methods"] and "gradcam" in detail["methods"]  # the head is linear
    assert all(gate in detail["layers"] for gate in gates)

    rng = np.random.default_rng(11)
    photo = shape_image("disc", rng, size=96).resize((120, 84))  # not square: the map must follow the upload
    files = [upload(encode(photo, "PNG"), "disc.png", "image/png")]
    response = explain(api, name, files)
    if not has_spatial:
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"] == "/problems/unsupported-method" and problem["status"] == 422
        assert problem["valid"] == detail["methods"] and "attention" not in problem["valid"]
        assert any(error["field"] == "method" for error in problem["errors"])
        return

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"id": name, "version": 1}
    (result,) = body["results"]
    explanation = result["explanation"]
    assert explanation["method"] == "attention" and explanation["layer"] == gates[0]
    assert explanation["target"] == result["predictions"][0]
    heatmap = base64.b64decode(explanation["heatmap_png"])
    assert png_size(heatmap) == photo.size and png_size(base64.b64decode(explanation["overlay"])) == photo.size
    gate = explanation["gate"]  # the raw gate: residual, so a multiplier in (0, 2)
    assert 0 <= gate["min"] <= gate["mean"] <= gate["max"] <= 2
    assert gate["flat"] == (gate["max"] - gate["min"] < 0.05)
    # the map's peak is scaled to 255, as for every method, unless the gate is flat: then all zeros
    assert decode_png(heatmap).max() == (0 if gate["flat"] else 255)
    gradcam = api.post(f"/v1/models/{name}/explain", files=files, data={"method": "gradcam"})
    assert gradcam.status_code == 200 and gradcam.json()["results"][0]["explanation"]["gate"] is None

    for gate in gates[1:]:  # an earlier gate by the `layer` field
        other = explain(api, name, files, layer=gate)
        assert other.status_code == 200, other.text
        assert other.json()["results"][0]["explanation"]["layer"] == gate
    for module, gate in zip(modules, gates):  # or by the module the model's `attention` lists
        by_module = explain(api, name, files, layer=module)
        assert by_module.status_code == 200, by_module.text
        assert by_module.json()["results"][0]["explanation"]["layer"] == gate
    wrong = explain(api, name, files, layer="head")
    assert wrong.status_code == 422, wrong.text
    assert wrong.json()["type"] == "/problems/unknown-layer" and wrong.json()["valid"] == gates


# --- (b) localization: the learned attention map concentrates where the class evidence is ---------------

LOCALIZATION_INPUT = 128   # the after-head gate map is 4 x 4 at this input size
LOCALIZATION_IMAGE = 160   # resize short side to 128 + 32, centre crop 128: the crop is pixels 16..144


def test_learned_spatial_attention_concentrates_on_the_region_with_the_class_evidence(api, workers):
    """The class's shape is always in the left half of the crop; the right half holds a shape of a
    random class. Only attention that weighs the left half above the right can separate the classes
    with a global-average-pool head, so the learned gate should put more of its mass on the left.

    Measured as heatmap *mass* (sum of heatmap pixel values) inside the region vs outside it, within
    the crop (the heatmap is 0 outside the crop). The region is exactly half the crop, so mass and
    per-area density give the same verdict here: a map that is flat, or spread at random, scores about
    0.5 either way, and a larger mass inside cannot come from the region simply being bigger. (An
    untrained residual gate is 1 everywhere: reported flat, its map all zeros.) The raw gate, too,
    is higher on the evidence than elsewhere: a multiplier above the untouched 1 there."""
    workers()
    dataset = create_dataset(api, evidence_left_archive(20, 0, LOCALIZATION_IMAGE, LOCALIZATION_INPUT), "evidence-left")
    done, seconds = run_fine_tune(api, {
        "base_model": "efficientnet_lite0", "dataset_id": dataset["id"], "output_model": "evidence-left",
        "strategy": "feature_extraction", "epochs": 3, "batch_size": 16, "input_size": LOCALIZATION_INPUT,
        "lr": 0.01, "early_stopping_patience": 3, "seed": 1, "attention": "spatial", "attention_stages": 1,
        # no flips (they would move the evidence to the right half), no geometry changes
        "augmentation": {"flip": False, "rotation": 0, "zoom": 0, "shear": 0, "color_jitter": 0.05}})
    metrics = done["result"]["metrics"]

    detail = api.get("/v1/models/evidence-left").json()
    gate = "attention.after_head.spatial.gate"
    assert "attention" in detail["methods"] and gate in detail["layers"]

    rng = np.random.default_rng(2024)
    kinds = [SHAPE_CLASSES[index % len(SHAPE_CLASSES)] for index in range(12)]
    cases = [evidence_left_image(kind, rng, LOCALIZATION_IMAGE, LOCALIZATION_INPUT) for kind in kinds]
    files = [upload(encode(image, "PNG"), f"{index}.png", "image/png") for index, (image, _) in enumerate(cases)]
    response = explain(api, "evidence-left", files, layer=gate)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    inside_fractions = []
    for result, (image, middle) in zip(results, cases):
        assert result["explanation"]["layer"] == gate and not result["explanation"]["gate"]["flat"]
        heat = decode_png(base64.b64decode(result["explanation"]["heatmap_png"])).astype(np.float64)
        assert heat.shape == (image.height, image.width)
        inside, outside = heat[:, :middle].sum(), heat[:, middle:].sum()
        inside_fractions.append(inside / (inside + outside))
    correct = sum(r["predictions"][0]["label"] == kind for r, kind in zip(results, kinds))
    fractions = np.round(inside_fractions, 3).tolist()
    print(f"\nlocalization: fine-tune {seconds:.1f} s, val accuracy {metrics['val_accuracy']:.2f} "
          f"(per epoch {[round(h['val_accuracy'], 2) for h in metrics['history']]}), {correct}/{len(kinds)} "
          f"test images right; attention mass inside the evidence region: mean {np.mean(inside_fractions):.3f}, "
          f"min {np.min(inside_fractions):.3f}, per image {fractions}")
    assert all(fraction > 0.5 for fraction in inside_fractions), fractions  # inside > outside, every image
