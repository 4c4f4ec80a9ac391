"""The report of a fine-tune (core.training.report): the background-reliance score's geometry,
and on a model fine-tuned here, that it lists exactly the planted label mistakes and flags the
class whose only evidence is a patch near the border."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from core.models.catalog import load_builtin
from core.training import data
from core.training.config import Augmentation, FineTuneConfig
from core.training.finetune import evaluate, fine_tune
from core.explain import METHODS
from core.training.report import BACKGROUND_WARNING, background_reliance, beyond_warning, central_mask, \
    fine_tune_report, gradcam_maps, score_layer, write_report

SIZE = 224          # the images and the model's input: a 7x7 CAM layer, 14x14 at the score layer
CLASSES = ("disc", "square", "marked")
PATCH = 40


def picture(kind: str, marked: bool, rng: np.random.Generator) -> Image.Image:
    """A disc or a square in the middle of a noisy background, or (`marked`) no shape but a
    magenta patch touching a random edge: the marked class's only evidence is near the border."""
    image = Image.fromarray(rng.integers(90, 170, (SIZE + 32, SIZE + 32, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    centre, extent = (SIZE + 32) // 2 + int(rng.integers(-6, 7)), int(rng.integers(36, 52))
    box = (centre - extent // 2, centre - extent // 2, centre + extent // 2, centre + extent // 2)
    if not marked:
        (draw.ellipse if kind == "disc" else draw.rectangle)(box, fill=(40, 60, 220) if kind == "disc"
                                                             else (40, 200, 60))
    else:
        low, high = 16, 16 + SIZE - PATCH  # inside the centre crop the model sees
        along, side = int(rng.integers(low, high)), int(rng.integers(4))
        left, top = {0: (along, low), 1: (along, high), 2: (low, along), 3: (high, along)}[side]
        draw.rectangle((left, top, left + PATCH - 1, top + PATCH - 1), fill=(230, 20, 200))
    return image


def make_items(folder, count_per_class: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    items = []
    for label, name in enumerate(CLASSES):
        for index in range(count_per_class):
            kind = name
            path = folder / f"{name}-{seed}-{index}.png"
            picture(kind, name == "marked", rng).save(path)
            items.append((path, label))
    return items


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cue")
    base_spec, base = load_builtin("efficientnet_lite0")
    config = FineTuneConfig(dataset_id="cue", output_model="cue", strategy="feature_extraction", epochs=6,
                            batch_size=12, lr=0.02, input_size=SIZE, seed=0, early_stopping_patience=6,
                            augmentation=Augmentation(rotation=0, zoom=0, shear=0, color_jitter=0))
    result = fine_tune(config, base_spec, base, list(CLASSES), make_items(folder, 10, seed=0), lambda *a, **k: None,
                       lambda: False, torch.device("cpu"), 10**8)
    assert result.metrics["val_accuracy"] >= 0.8, result.metrics
    return result, folder


def test_the_central_box_covers_half_the_area():
    for size in (7, 14, 160, 224):
        assert abs(central_mask(size).float().mean().item() - 0.5) < 1.5 / size


def test_background_reliance_of_uniform_centred_and_border_maps():
    centre, border = np.zeros((7, 7), np.float32), np.zeros((7, 7), np.float32)
    centre[3, 3] = 1
    border[0, :] = 1
    scores = background_reliance(np.stack([np.ones((7, 7), np.float32), centre, border, np.zeros((7, 7))]), 224)
    assert abs(scores[0] - 0.5) < 0.02 and scores[1] < 0.05 and scores[2] > 0.9 and np.isnan(scores[3])


def test_one_pass_gives_the_explainers_maps_at_both_layers(trained):
    result, folder = trained
    network, spec = result.network.eval(), result.spec
    inputs = data.Normalizer(spec)(data.load_squares(make_items(folder, 1, seed=2), spec, 10**8)[0])
    truth = torch.tensor([2, 0, 1])
    maps = gradcam_maps(network, inputs, truth, spec.cam_layer, "blocks.10")
    alone = METHODS["gradcam"](network, inputs, None, spec.cam_layer)
    assert torch.equal(maps.logits, alone.logits)
    np.testing.assert_allclose(maps.predicted, alone.maps, atol=1e-5)
    np.testing.assert_allclose(maps.score, METHODS["layercam"](network, inputs, None, "blocks.10").maps, atol=1e-5)
    np.testing.assert_allclose(maps.true, METHODS["gradcam"](network, inputs, truth, spec.cam_layer).maps, atol=1e-5)


def test_report_lists_the_planted_mistakes_and_flags_the_border_cue(trained, tmp_path):
    result, folder = trained
    network, spec = result.network.eval(), result.spec
    items = make_items(folder, 6, seed=1)
    planted = {0: 1, 1: 1, 7: 0}  # item index -> the wrong label it is given (two discs, one square)
    labelled = [(path, planted.get(index, label)) for index, (path, label) in enumerate(items)]
    pixels, labels = data.load_squares(labelled, spec, 10**8)
    files = [path.name for path, _ in labelled]
    assert score_layer(network, spec) == "blocks.10"
    reported = []
    report = fine_tune_report(network, spec, pixels, labels, files, 8, torch.device("cpu"),
                              lambda fraction, **details: reported.append((fraction, details)), lambda: False)
    assert reported[0] == (0.0, {"phase": "report", "images": 0, "total": len(files)})  # before the first batch
    assert reported[-1] == (1.0, {"phase": "report", "images": len(files), "total": len(files)})
    document = report.document
    mistaken = {mistake["file"] for mistake in document["mistakes"]}
    classes = document["classes"]
    print(f"mistakes {[(m['file'], m['true']['label'], m['predicted']['label']) for m in document['mistakes']]}; "
          f"background reliance "
          f"{[(c['label'], c['background_reliance'], c['background_reliance_cam_layer']) for c in classes]}")
    assert {files[index] for index in planted} <= mistaken and len(mistaken) <= len(planted) + 1
    for mistake in document["mistakes"]:
        if mistake["file"] in {files[index] for index in planted}:
            assert mistake["true"]["index"] == planted[files.index(mistake["file"])]
            assert mistake["predicted"]["probability"] > mistake["true"]["probability"]

    scores = {entry["label"]: entry["background_reliance"] for entry in document["classes"]}
    assert document["background_reliance_flagged"] == ["marked"], scores
    assert scores["marked"] > BACKGROUND_WARNING > max(scores["disc"], scores["square"])

    summary = write_report(report, tmp_path, lambda name: f"/artifacts/{name}")
    assert summary["background_reliance_flagged"] == ["marked"] and summary["mistakes"] == len(mistaken)
    written = json.loads((tmp_path / "report.json").read_text())
    first = written["mistakes"][0]["pictures"]
    assert set(first) == {"image", "gradcam_predicted", "gradcam_true"}
    for url in first.values():
        assert Image.open(tmp_path / url.removeprefix("/artifacts/")).size == (SIZE, SIZE)
    mean_map = written["classes"][2]["mean_gradcam"]
    assert Image.open(tmp_path / mean_map["picture"].removeprefix("/artifacts/")).size == (SIZE, SIZE)


def test_a_class_is_flagged_only_when_its_images_show_reliance_beyond_chance():
    assert not beyond_warning([0.5075])  # one image: the README's pets example, no evidence
    assert not beyond_warning([0.9, 0.95])  # two images: still too few
    assert not beyond_warning([0.52, 0.48, 0.55, 0.51])  # above 0.5 on average, within chance
    assert beyond_warning([0.66, 0.7, 0.62, 0.68])
    assert not beyond_warning([0.7, float("nan"), float("nan")])  # flat maps have no score


def test_a_class_without_validation_images_has_no_accuracy_rather_than_zero():
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 2, 3))
    with torch.no_grad():  # class 0 for every image
        network[1].weight.zero_()
        network[1].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    pixels, labels = torch.zeros((3, 3, 2, 2), dtype=torch.uint8), torch.tensor([0, 0, 1])
    measured = evaluate(network, pixels, labels, lambda batch: batch.float(), 3, 2, torch.device("cpu"),
                        lambda: False)
    assert measured["per_class_accuracy"] == [1.0, 0.0, None] and measured["accuracy"] == pytest.approx(2 / 3)
