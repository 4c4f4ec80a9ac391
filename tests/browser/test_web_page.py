"""The web page in a real browser (Debian's Chromium driven by Playwright) against the real service
(`python -m service.launch`: embedded Redis, one Celery worker, the API with EfficientNet-Lite0).
Screenshots land in test-output/screenshots/ for a person to look at."""

from __future__ import annotations

import io
import json
import random
import re
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from core.names import FLAT_GATE_RANGE
from support import chelsea, coffee, encode, upload
from tests.api.test_model_refusals import onnx_classifier
from tests.browser.chromium import LAPTOP, PHONE, PIXEL_DIFF, start_flamingo_maximization
from tests.live_service import LiveService

pytestmark = pytest.mark.browser

CANVAS_SIGNATURE = """(selector) => {
  const canvas = document.querySelector(selector);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let hash = 0;
  for (let i = 0; i < data.length; i += 97) hash = (hash * 31 + data[i]) >>> 0;
  return [canvas.width, canvas.height, hash];
}"""


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with LiveService(tmp_path_factory.mktemp("browser-service")) as live:
        yield live


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    (folder / "chelsea.jpg").write_bytes(encode(chelsea()))
    (folder / "coffee.jpg").write_bytes(encode(coffee()))
    (folder / "broken.jpg").write_bytes(b"this is a text file, not a JPEG\n" * 4)
    (folder / "empty.jpg").write_bytes(b"")
    return folder


@pytest.fixture
def page(browser, service):
    # Playwright's polling runs the tests' string predicates as code, which the page's policy
    # refuses (test_the_page_runs_under_its_content_security_policy runs it with the policy)
    context = browser.new_context(viewport=LAPTOP, device_scale_factor=1, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    asked_for_key = page.locator("dialog.key-dialog[open]").count()   # open service: never
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    assert not asked_for_key, "the API key dialog was shown by a service without keys"


def open_explain(page, service, photo: Path) -> None:
    page.goto(f"{service.url}/#explain")
    page.wait_for_selector("body[data-ready=explain]")
    page.wait_for_function("document.querySelector('#method-select').options.length > 0")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector(".result-card img.original")


def explain(page) -> None:
    page.click("#explain-btn")
    page.wait_for_selector(".result-card .map-canvas[data-target]")


def uploaded_tiny_dataset(service, folder: Path, name: str) -> str:
    """tiny_dataset uploaded under `name`; its id."""
    created = httpx.post(f"{service.url}/v1/datasets", files=[upload(tiny_dataset(folder).read_bytes(), "pets.zip",
                                                                    "application/zip")],
                         data={"name": name}, timeout=60)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def submitted_then_listed(page, service, kind: str, body: dict):
    """A job of `kind` submitted through the API, then the jobs view open: its id and its card."""
    job = httpx.post(f"{service.url}/v1/jobs/{kind}", timeout=30, json=body)
    assert job.status_code == 202, job.text
    page.goto(f"{service.url}/#jobs")
    page.wait_for_selector("body[data-ready=jobs]")
    return job.json()["id"], page.locator(f'.job-card[data-job-id="{job.json()["id"]}"]')


def tiny_dataset(folder: Path) -> Path:
    """2 classes x 4 real photos (random crops of chelsea and coffee), as a class-folder zip."""
    rng = random.Random(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, photo in (("cat", chelsea()), ("coffee", coffee())):
            width, height = photo.size
            for index in range(4):
                side = rng.randint(min(width, height) * 2 // 3, min(width, height))
                left, top = rng.randint(0, width - side), rng.randint(0, height - side)
                crop = photo.crop((left, top, left + side, top + side)).resize((96, 96), Image.BILINEAR)
                archive.writestr(f"pets/{name}/{index}.jpg", encode(crop))
    path = folder / "pets.zip"
    path.write_bytes(buffer.getvalue())
    return path


def test_explain_draws_an_overlay_that_differs_from_the_original(page, service, photos, shots):
    open_explain(page, service, photos / "chelsea.jpg")
    explain(page)
    canvas = ".result-card .map-canvas"
    overlay_diff = page.evaluate(PIXEL_DIFF, [canvas, ".result-card img.original"])
    assert overlay_diff > 10, overlay_diff
    # left of the centre crop (451 x 300: x < 94) the model saw nothing: the photo shows untinted,
    # as in the API's own overlay, not tinted as the lowest value
    outside = page.evaluate("""() => {
      const map = document.querySelector('.result-card .map-canvas');
      const original = document.querySelector('.result-card img.original');
      const copy = document.createElement('canvas');
      copy.width = original.naturalWidth; copy.height = original.naturalHeight;
      copy.getContext('2d').drawImage(original, 0, 0);
      const a = map.getContext('2d').getImageData(0, 0, 90, 300).data;
      const b = copy.getContext('2d').getImageData(0, 0, 90, 300).data;
      let worst = 0;
      for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
      return [map.width, worst];
    }""")
    assert outside == [451, 0], outside
    assert page.locator(".result-card .prediction").count() == 5
    assert "tabby" in page.locator(".result-card .prediction.selected").inner_text().lower() or \
        "cat" in page.locator(".result-card .prediction.selected").inner_text().lower()
    # the opacity slider composites client-side: 0 shows the original, 1 the heatmap alone
    page.locator("#opacity").fill("0")
    assert page.evaluate(PIXEL_DIFF, [canvas, ".result-card img.original"]) < 1
    page.locator("#opacity").fill("0.5")
    page.check("#heatmap-only")
    heat_only = page.evaluate(PIXEL_DIFF, [canvas, ".result-card img.original"])
    assert heat_only > overlay_diff
    # the heatmap alone: opaque colours inside the crop; outside it, not blank, the photo faded to grey
    inside, outside = page.evaluate("""() => {
      const map = document.querySelector('.result-card .map-canvas').getContext('2d');
      const sample = (x) => {
        const data = map.getImageData(x, 30, 40, 240).data;
        const alphas = new Set(), greys = new Set();
        let coloured = 0;
        for (let i = 0; i < data.length; i += 4) {
          alphas.add(data[i + 3]);
          greys.add(data[i]);
          const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
          if (Math.max(r, g, b) - Math.min(r, g, b) > 2) coloured++;
        }
        return [[...alphas], greys.size, coloured];
      };
      return [sample(200), sample(20)];
    }""")
    assert inside[0] == [255] and inside[2] > 0, inside
    alphas, greys, coloured = outside
    assert len(alphas) == 1 and 50 < alphas[0] < 120 and coloured == 0 and greys > 20, outside
    page.uncheck("#heatmap-only")
    page.screenshot(path=str(shots / "explain-laptop.png"), full_page=True)
    # any map downloads as a PNG
    with page.expect_download() as download:
        page.get_by_role("button", name="Download PNG").click()
    assert download.value.suggested_filename == "chelsea-gradcam.png"
    assert Path(download.value.path()).read_bytes().startswith(b"\x89PNG")
    # faithfulness scores when asked
    page.check("#faithfulness")
    page.click("#explain-btn")
    page.wait_for_selector(".result-card .faithfulness dd")
    scores = page.locator(".result-card .faithfulness dd").all_inner_texts()
    assert len(scores) == 2 and all(0 <= float(score) <= 1 for score in scores), scores


def test_clicking_the_second_class_explains_that_class(page, service, photos):
    open_explain(page, service, photos / "chelsea.jpg")
    explain(page)
    canvas = ".result-card .map-canvas"
    first_target = page.get_attribute(canvas, "data-target")
    before = page.evaluate(CANVAS_SIGNATURE, canvas)
    second = page.locator('.result-card .prediction[data-rank="2"]')
    index = second.get_attribute("data-index")
    assert index != first_target
    # record the form fields of every request the page sends (Chromium hides multipart bodies with files)
    page.evaluate("""() => {
      window.__sent = [];
      const original = window.fetch;
      window.fetch = (url, init = {}) => {
        if (init.body instanceof FormData) {
          window.__sent.push({url: String(url), fields: [...init.body.entries()].filter(([, v]) => typeof v === 'string')});
        }
        return original(url, init);
      };
    }""")
    second.click()
    page.wait_for_function("window.__sent.length === 1")
    sent = page.evaluate("window.__sent[0]")
    assert sent["url"].endswith("/v1/models/efficientnet_lite0/explain")
    assert ["target", index] in sent["fields"] and ["outputs", "heatmap"] in sent["fields"]
    page.wait_for_selector(f'{canvas}[data-target="{index}"]')
    assert page.evaluate(CANVAS_SIGNATURE, canvas) != before
    assert page.locator(".result-card .prediction.selected").get_attribute("data-index") == index


def test_an_answer_for_a_model_no_longer_chosen_is_dropped(page, service, photos):
    """Another model chosen while an explanation ran: the old model's map and classes were shown
    under the new model's name, and a click on one of them sent its class to the new model."""
    open_explain(page, service, photos / "chelsea.jpg")
    page.select_option("#method-select", "integrated_gradients")  # slow enough to choose another meanwhile
    page.click("#explain-btn")
    page.wait_for_selector("#explain-btn.busy")
    page.select_option("#model-select", "efficientnet_lite1")
    page.wait_for_selector("#explain-btn:not(.busy)", timeout=120_000)
    assert page.locator(".result-card .map-canvas[data-target]").count() == 0
    assert page.locator(".result-card .prediction").count() == 0
    assert page.locator(".result-card .map-slot.loading").count() == 0
    page.select_option("#method-select", "gradcam")
    explain(page)  # the chosen model's own, tagged with its name
    assert page.locator(".result-card .card-meta .tag").first.inner_text() == "efficientnet_lite1"


def test_compare_shows_four_methods_side_by_side(page, service, photos, shots):
    open_explain(page, service, photos / "chelsea.jpg")
    explain(page)
    checked = page.locator("#compare-methods input:checked")
    assert sorted(checked.evaluate_all("nodes => nodes.map(n => n.value)")) == \
        ["gradcam", "integrated_gradients", "saliency", "smoothgrad"]
    page.select_option("#method-select", "saliency")
    assert page.locator("#layer-select").is_disabled()  # it explains the input's pixels
    page.select_option("#method-select", "gradcam")
    assert page.locator("#layer-select").is_enabled()
    # a layer, which only gradcam takes: the page sends it to gradcam alone (the others would be refused)
    page.evaluate("document.querySelector('#layer-select').value = 'blocks.15'")
    page.click("#compare-btn")
    page.wait_for_function("document.querySelectorAll('.compare-cell .map-canvas[data-target]').length === 4",
                           timeout=90_000)
    assert page.locator(".compare-cell .compare-info .time").count() == 4
    methods = page.locator(".compare-cell").evaluate_all("nodes => nodes.map(n => n.dataset.method)")
    assert methods == ["gradcam", "saliency", "integrated_gradients", "smoothgrad"]
    signatures = {tuple(page.evaluate(CANVAS_SIGNATURE, f'.compare-cell[data-method="{m}"] canvas')) for m in methods}
    assert len(signatures) == 4
    page.screenshot(path=str(shots / "compare-laptop.png"), full_page=True)


def test_an_unreadable_file_shows_the_problem_title_and_detail(page, service, photos, shots):
    blob = (photos / "broken.jpg").read_bytes()
    expected = httpx.post(f"{service.url}/v1/models/efficientnet_lite0/explain",
                          files=[("file", ("broken.jpg", blob, "image/jpeg"))], data={"outputs": "heatmap"}).json()
    assert expected["status"] == 422
    open_explain_any = page.goto(f"{service.url}/#explain")
    assert open_explain_any.ok
    page.wait_for_selector("body[data-ready=explain]")
    page.wait_for_function("document.querySelector('#method-select').options.length > 0")
    page.set_input_files("#file-input", str(photos / "broken.jpg"))
    page.click("#explain-btn")
    problem = page.locator(".results .problem")
    problem.wait_for()
    text = problem.inner_text()
    assert expected["title"] in text and expected["detail"] in text
    assert problem.locator(".problem-title strong").is_visible()
    page.screenshot(path=str(shots / "error-laptop.png"))
    # beside a good photo, each refusal shows on the broken file's own card
    page.reload()
    page.wait_for_selector("body[data-ready=explain]")
    page.wait_for_function("document.querySelector('#method-select').options.length > 0")
    explains: list[str] = []
    page.on("request", lambda request: explains.append(request.url) if request.url.endswith("/explain") else None)
    page.set_input_files("#file-input", [str(photos / name) for name in ("broken.jpg", "chelsea.jpg", "empty.jpg")])
    page.click("#explain-btn")
    card_problem = page.locator(".result-card", has_text="broken.jpg").locator(".card-error .problem")
    card_problem.wait_for()
    assert "file 0 ('broken.jpg'): the file is not an image" in card_problem.inner_text()
    assert "empty" not in card_problem.inner_text()
    empty_problem = page.locator(".result-card", has_text="empty.jpg").locator(".card-error .problem")
    assert "file 2 ('empty.jpg'): the file is empty" in empty_problem.inner_text()
    assert page.locator(".result-card", has_text="chelsea.jpg").locator(".problem").count() == 0
    # and the good photo is explained without them (it stayed at "Press Explain" before), in one more request
    page.locator(".result-card", has_text="chelsea.jpg").locator(".map-canvas[data-target]").wait_for()
    assert len(explains) == 2, explains


def test_fine_tune_from_the_form_shows_live_progress_then_plots(page, service, tmp_path, photos, shots):
    events: list[str] = []
    page.on("request", lambda request: events.append(request.url) if request.url.endswith("/events") else None)
    page.goto(f"{service.url}/#jobs")
    page.wait_for_selector("body[data-ready=jobs]")
    page.set_input_files("#dataset-file", str(tiny_dataset(tmp_path)))
    page.fill("#dataset-name", "pets")
    page.click("#dataset-form button[type=submit]")
    page.wait_for_selector("#dataset-message .ok")
    form = page.locator("#finetune-form")
    assert form.locator(".dataset-select").input_value() != ""
    # every field of FineTuneRequest is on the form, nested ones included, with its default
    assert form.locator('[name="epochs"]').input_value() == "5"
    assert form.locator('[name="augmentation.rotation"]').input_value() == "10"
    assert form.locator('[name="head.dropout"]').input_value() == "0.2"
    assert form.locator('[name="augmentation.flip"]').is_checked()
    form.locator('[name="output_model"]').fill("pets")
    form.locator('[name="epochs"]').fill("1")
    form.locator('[name="batch_size"]').fill("4")
    form.locator('[name="input_size"]').fill("64")
    form.locator('[name="strategy"]').select_option("feature_extraction")
    form.locator('[name="val_fraction"]').fill("0.25")
    form.locator('[name="attention"]').select_option("spatial")
    # record every progress text the page shows while the job runs
    page.evaluate("""() => {
      window.__progress = [];
      new MutationObserver(() => {
        for (const node of document.querySelectorAll('.job-card .progress-text')) window.__progress.push(node.textContent);
      }).observe(document.querySelector('#job-list'), {subtree: true, childList: true, characterData: true});
    }""")
    form.locator("button[type=submit]").click()
    card = page.locator(".job-card").first
    card.wait_for()
    page.wait_for_selector('.job-card[data-state="succeeded"]', timeout=120_000)
    assert any("/events" in url for url in events), events
    seen = page.evaluate("window.__progress")
    assert seen, "no live progress was shown"
    assert card.locator(".chart polyline, .chart circle").count() >= 4      # loss and accuracy, train and val
    assert card.locator(".confusion .cell").count() == 4
    assert card.locator(".charts").first.locator(".bars li").count() == 2     # accuracy per class
    link = card.get_by_role("link", name="Explain with pets@1")
    assert link.is_visible()
    report = card.locator(".report")
    assert report.locator(".bars li").count() == 2                          # background reliance of both classes
    with page.expect_download() as download:
        report.get_by_role("button", name="Download report.json").click()
    document = json.loads(Path(download.value.path()).read_text())
    assert [entry["label"] for entry in document["classes"]] == ["cat", "coffee"]
    # per class, the mean Grad-CAM of the validation images it got right (a class with none says so)
    right = sum(1 for entry in document["classes"] if "mean_gradcam" in entry)
    page.wait_for_function("(n) => document.querySelectorAll('.report-means .gallery-frame img').length === n",
                           arg=right)
    assert report.locator(".report-means figure").count() == 2
    assert report.locator(".report-means figure", has_text="none right").count() == 2 - right
    # each mistake with pictures is drawn: the crop and Grad-CAM for both classes
    mistakes = sum(1 for mistake in document["mistakes"] if "pictures" in mistake)
    page.wait_for_function("(n) => document.querySelectorAll('.report-mistakes .gallery-frame img').length === 3 * n",
                           arg=min(mistakes, 8))
    page.screenshot(path=str(shots / "jobs-laptop.png"))
    card.screenshot(path=str(shots / "fine-tune-result-laptop.png"))
    link.click()
    page.wait_for_function("document.querySelector('#model-select').value === 'pets@1'")
    # the attention module's map shows the raw gate's range beside it
    page.wait_for_function("[...document.querySelector('#method-select').options].some((o) => o.value === 'attention')")
    page.select_option("#method-select", "attention")
    page.set_input_files("#file-input", str(photos / "chelsea.jpg"))
    page.wait_for_selector(".result-card img.original")
    explain(page)
    gate = page.locator(".result-card .tag.gate").inner_text()
    low, high = (float(value) for value in gate.split()[1].rstrip(",").split("–"))
    assert 0 <= low <= high <= 2, gate   # a residual gate: x * (1 + tanh(z))
    assert gate.endswith("· flat") == (high - low < FLAT_GATE_RANGE), gate


def fine_tune_form(page, service, tmp_path, name: str):
    """The jobs view's fine-tune form, on a tiny data set uploaded as `name`, to publish as `name`."""
    dataset = uploaded_tiny_dataset(service, tmp_path, name)
    page.goto(f"{service.url}/#jobs")
    page.wait_for_selector("body[data-ready=jobs]")
    form = page.locator("#finetune-form")
    form.locator('[name="dataset_id"]').select_option(dataset)
    form.locator('[name="output_model"]').fill(name)
    return form


def test_a_field_the_browser_refuses_inside_closed_options_opens_them(page, service, tmp_path):
    """Closed (as they start on a phone), the form did not submit and said nothing: the browser
    could not show its message on a field it could not focus."""
    form = fine_tune_form(page, service, tmp_path, "pets-invalid")
    form.locator('[name="epochs"]').fill("1.5")
    form.locator("details.options").evaluate("(details) => { details.open = false; }")
    posted: list = []
    page.on("request", lambda request: posted.append(request.url) if request.method == "POST" else None)
    form.locator("button[type=submit]").click()
    page.wait_for_function("document.querySelector('#finetune-form details.options').open")
    assert form.locator('[name="epochs"]').evaluate("(input) => input.validity.valid") is False
    assert not posted


def test_the_fine_tune_form_sends_lr_as_auto_or_a_number(page, service, tmp_path):
    """`lr` is a number or "auto" (an anyOf): the form kept only the number's branch, so the
    learning-rate range test could not be asked for."""
    form = fine_tune_form(page, service, tmp_path, "pets-lr")
    form.locator('[name="epochs"]').fill("1")
    form.locator('[name="input_size"]').fill("64")
    lr = form.locator('[name="lr"]')
    assert lr.input_value() == "0.001"                                   # the default, still a number
    offered = "(input) => [...input.list.options].map((option) => option.value)"
    assert lr.evaluate(offered) == ["auto"]
    assert page.locator('#sweep-form [name="base.lr"]').evaluate(offered) == ["auto"]   # a sweep's base too
    assert '"auto"' in form.locator(".field", has=page.locator('[name="lr"]')).locator(".hint").inner_text()
    posted: list = []
    page.on("request", lambda request: posted.append(request.post_data_json)
            if request.method == "POST" and request.url.endswith("/v1/jobs/fine-tune") else None)
    lr.fill("fast")
    form.locator("button[type=submit]").click()
    assert 'lr takes a number or "auto", not "fast"' in form.locator(".form-message").inner_text()
    assert posted == []
    started = []
    try:
        for typed, sent in (("auto", "auto"), ("0.02", 0.02)):
            lr.fill(typed)
            with page.expect_response(lambda response: response.url.endswith("/v1/jobs/fine-tune")) as answer:
                form.locator("button[type=submit]").click()
            assert answer.value.status == 202, answer.value.text()
            started.append(answer.value.json()["id"])
            assert posted[-1]["lr"] == sent and type(posted[-1]["lr"]) is type(sent)
            job = httpx.get(f"{service.url}/v1/jobs/{started[-1]}", timeout=30).json()
            assert job["params"]["lr"] == sent
            page.locator(f'.job-card[data-job-id="{started[-1]}"]').wait_for()
    finally:
        for job_id in started:
            httpx.delete(f"{service.url}/v1/jobs/{job_id}", timeout=30)


def test_a_fine_tunes_mistakes_show_with_grad_cam_for_both_classes(page, service, shots):
    """Both classes hold the same photo: of the two validation images, one labelled each way, the
    model must get one wrong."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        photo = encode(chelsea().resize((96, 64), Image.BILINEAR))
        for name in ("cat", "coffee"):
            for index in range(4):
                archive.writestr(f"same/{name}/{index}.jpg", photo)
    created = httpx.post(f"{service.url}/v1/datasets", files=[upload(buffer.getvalue(), "same.zip", "application/zip")],
                         data={"name": "same"}, timeout=60)
    assert created.status_code == 201, created.text
    job = httpx.post(f"{service.url}/v1/jobs/fine-tune", timeout=30, json={
        "dataset_id": created.json()["id"], "output_model": "same", "epochs": 1, "batch_size": 4, "input_size": 64,
        "strategy": "feature_extraction", "val_fraction": 0.25})
    assert job.status_code == 202, job.text
    page.goto(f"{service.url}/#jobs")
    page.wait_for_selector("body[data-ready=jobs]")
    card = page.locator(f'.job-card[data-job-id="{job.json()["id"]}"]')
    card.locator(".report-mistakes .mistake").first.wait_for(timeout=120_000)
    mistake = card.locator(".report-mistakes .mistake")
    assert mistake.count() == 1 and card.locator(".result-summary .stat", has_text="Mistakes").inner_text().endswith("1")
    page.wait_for_function("(id) => document.querySelectorAll(`.job-card[data-job-id='${id}'] .mistake img`).length === 3",
                           arg=job.json()["id"])
    assert mistake.locator("img").evaluate_all("images => images.map((image) => image.naturalWidth)") == [64, 64, 64]
    assert "taken for" in mistake.inner_text() and "null" not in card.locator(".report-mistakes").inner_text()
    card.screenshot(path=str(shots / "fine-tune-mistakes-laptop.png"))


def test_an_explain_dataset_job_shows_each_class_mean_map_and_its_downloads(page, service, tmp_path, shots):
    dataset = uploaded_tiny_dataset(service, tmp_path, "pets-maps")
    job_id, card = submitted_then_listed(page, service, "explain-dataset",
                                         {"dataset_id": dataset, "method": "gradcam", "faithfulness": True})
    page.wait_for_function("(id) => document.querySelectorAll(`.job-card[data-job-id='${id}'] .class-mean img`).length === 2",
                           arg=job_id, timeout=120_000)
    assert card.get_attribute("data-state") == "succeeded"
    assert "Explain data set" in card.locator(".job-title").inner_text()
    captions = card.locator(".class-mean figcaption").all_inner_texts()
    assert [caption.split("\n")[0] for caption in captions] == ["cat", "coffee"]
    assert all("4 images" in caption and "deletion" in caption for caption in captions), captions
    assert card.locator(".class-mean img").evaluate_all("images => images.map((image) => image.naturalWidth)") == [224, 224]
    with page.expect_download() as download:
        card.get_by_role("button", name="Download heatmaps (zip)").click()
    with zipfile.ZipFile(download.value.path()) as heatmaps:
        assert len([name for name in heatmaps.namelist() if name.endswith(".png")]) == 8
    with page.expect_download() as download:
        card.get_by_role("button", name="Download table (CSV)").click()
    assert len(Path(download.value.path()).read_text().strip().splitlines()) == 1 + 8
    card.screenshot(path=str(shots / "explain-dataset-result-laptop.png"))


def test_a_sweep_and_its_trials_all_show_in_the_job_list(page, service, tmp_path, shots):
    """A trial's result has metrics but no model: its card once failed, and every card after it
    was never drawn."""
    dataset = uploaded_tiny_dataset(service, tmp_path, "pets-sweep")
    base = {"dataset_id": dataset, "output_model": "swept", "epochs": 1, "batch_size": 4,
            "input_size": 64, "strategy": "feature_extraction"}
    sweep_id, card = submitted_then_listed(page, service, "sweep", {
        "base": base, "space": {"lr": {"log_uniform": [1e-3, 1e-2]}}, "trials": 2})
    page.wait_for_function("(id) => document.querySelector(`.job-card[data-job-id='${id}']`)?.dataset.state === 'succeeded'",
                           arg=sweep_id, timeout=180_000)
    page.reload()  # the list drawn afresh, with the finished trials in it
    page.wait_for_selector("body[data-ready=jobs]")
    card.wait_for()
    jobs = httpx.get(f"{service.url}/v1/jobs", timeout=30).json()["data"]
    trials = [job["id"] for job in jobs if job["params"].get("trial", {}).get("sweep") == sweep_id]
    assert len(trials) == 2
    page.wait_for_function("(count) => document.querySelectorAll('.job-card').length === count", arg=len(jobs))
    for trial in trials:
        trial_card = page.locator(f'.job-card[data-job-id="{trial}"]')
        assert "trial" in trial_card.locator(".job-title").inner_text()
        assert trial_card.locator(".result-summary .stat", has_text="Validation accuracy").count() == 1
    card.screenshot(path=str(shots / "sweep-laptop.png"))


def test_a_sweeps_card_shows_its_trials_live_then_the_best_and_its_model(page, service, tmp_path, shots):
    """A sweep's card showed its result as raw JSON: it shows a table of its trials (job, the
    values tried, state, validation accuracy), read again while the sweep runs, the best trial
    marked and the model it published named."""
    dataset = uploaded_tiny_dataset(service, tmp_path, "pets-trials")
    # 30 epochs, none stopped early: the second trial runs for seconds after the first has ended,
    # while the page reads them every 3 s (with 3 epochs, stopped after 4, it ran for 0.3 s, and a
    # quiet machine published the sweep before the page had read the first trial's end)
    base = {"dataset_id": dataset, "output_model": "trialled", "epochs": 30, "early_stopping_patience": 30,
            "batch_size": 4, "input_size": 64, "strategy": "feature_extraction"}
    space = {"lr": {"log_uniform": [1e-3, 1e-2]}, "head.dropout": {"uniform": [0, 0.5]}}
    sweep_id, card = submitted_then_listed(page, service, "sweep", {
        "base": base, "space": space, "trials": 2, "parallel": 1})
    # the trials' states each time the table changes while the sweep has not ended
    page.evaluate("""(id) => {
      window.__trialStates = [];
      new MutationObserver(() => {
        const card = document.querySelector(`.job-card[data-job-id='${id}']`);
        if (!card || !["queued", "running"].includes(card.dataset.state)) return;
        const states = [...card.querySelectorAll('.trials-table tbody tr')].map((row) => row.dataset.state);
        if (states.length) window.__trialStates.push(states);
      }).observe(document.querySelector('#job-list'), {subtree: true, childList: true, attributes: true});
    }""", sweep_id)
    page.wait_for_function("(id) => document.querySelector(`.job-card[data-job-id='${id}']`)?.dataset.state === 'succeeded'",
                           arg=sweep_id, timeout=180_000)
    seen = page.evaluate("window.__trialStates")
    # one trial at a time: the first ended while the sweep still ran, and the table showed it
    assert any("succeeded" in states for states in seen), seen
    assert any("running" in states or "queued" in states for states in seen), seen
    result = httpx.get(f"{service.url}/v1/jobs/{sweep_id}", timeout=30).json()["result"]
    table = card.locator(".trials-table")
    assert table.locator("thead th").all_inner_texts() == ["Trial", "Job", "lr", "head.dropout", "State", "Val accuracy"]
    assert table.locator("tbody tr").count() == 2
    page.wait_for_function("(id) => [...document.querySelectorAll(`.job-card[data-job-id='${id}'] .trials-table tbody tr`)]"
                           ".every((row) => row.dataset.state === 'succeeded')", arg=sweep_id)
    for trial in result["trials"]:
        cells = table.locator(f'tr[data-job-id="{trial["job_id"]}"] td').all_inner_texts()
        assert cells[0].startswith(f"#{trial['number']}") and cells[1] == trial["job_id"][:8], cells
        assert float(cells[2]) == pytest.approx(trial["params"]["lr"], rel=0.01), cells
        assert float(cells[3]) == pytest.approx(trial["params"]["head.dropout"], rel=0.01, abs=1e-3), cells
        assert cells[4].lower() == "succeeded" and cells[5] == f"{trial['value'] * 100:.1f}%", cells
    best = table.locator("tr.best")
    assert best.count() == 1 and best.get_attribute("data-job-id") == result["best"]["job_id"]
    assert "best" in best.locator("td").first.inner_text()
    published = f"{result['output_model']['id']}@{result['output_model']['version']}"
    assert card.locator(".stat", has_text="Published").inner_text().endswith(published)
    assert card.get_by_role("link", name=f"Explain with {published}").is_visible()
    assert card.locator("pre").count() == 0                                   # no raw JSON
    card.screenshot(path=str(shots / "sweep-trials-laptop.png"))


def test_a_sweep_and_a_data_set_explanation_start_from_their_forms(page, service, tmp_path, shots):
    dataset = uploaded_tiny_dataset(service, tmp_path, "pets-forms")
    page.goto(f"{service.url}/#jobs")
    page.wait_for_selector("body[data-ready=jobs]")

    page.click('[data-jobform="explain-dataset"]')
    form = page.locator("#explain-dataset-form")
    form.locator('[name="dataset_id"]').select_option(dataset)
    form.locator('[name="method"]').fill("saliency")
    form.locator('[name="options"]').fill("{not json")
    form.locator("button[type=submit]").click()
    assert "options is not JSON" in form.locator(".form-message").inner_text()
    form.locator('[name="options"]').fill("{}")
    form.locator("button[type=submit]").click()
    card = page.locator(".job-card", has_text="Explain data set").first
    page.wait_for_function("(card) => card.dataset.state === 'succeeded'", arg=card.element_handle(), timeout=120_000)

    page.click('[data-jobform="sweep"]')
    form = page.locator("#sweep-form")
    form.locator('[name="base.dataset_id"]').select_option(dataset)
    form.locator('[name="base.output_model"]').fill("web-swept")
    form.locator('[name="base.epochs"]').fill("1")
    form.locator('[name="space"]').fill('{"lr": {"log_uniform": [0.001, 0.01]}}')
    form.locator("button[type=submit]").click()
    sweep = page.locator(".job-card", has_text="web-swept").first
    sweep.wait_for()
    assert "Sweep" in sweep.locator(".job-title").inner_text()
    page.screenshot(path=str(shots / "sweep-form-laptop.png"))
    assert httpx.delete(f"{service.url}/v1/jobs/{sweep.get_attribute('data-job-id')}", timeout=30).status_code == 202


def test_many_unfinished_jobs_leave_the_page_connections_of_its_own(page, service):
    """Chromium opens at most 6 connections to a host: a stream per unfinished job took them all
    and the page's own calls hung. Three jobs are followed live, the others polled."""
    body = {"model": "efficientnet_lite0", "target": {"class": 130}, "steps": 10000, "size": 32}
    ids = []
    try:
        for _ in range(6):
            job = httpx.post(f"{service.url}/v1/jobs/activation-maximization", json=body, timeout=30)
            assert job.status_code == 202, job.text
            ids.append(job.json()["id"])
        page.goto(f"{service.url}/#jobs")
        page.wait_for_selector("body[data-ready=jobs]")
        page.wait_for_function("document.querySelectorAll('.job-card[data-live]').length === 3")
        seconds = page.evaluate("""async () => {
            const started = performance.now();
            await fetch("/v1/models");
            return (performance.now() - started) / 1000;
        }""")
        assert seconds < 5, seconds
    finally:
        for job_id in ids:
            httpx.delete(f"{service.url}/v1/jobs/{job_id}", timeout=30)
    for job_id in ids:  # the polled cards catch up too
        page.locator(f'.job-card[data-job-id="{job_id}"][data-state="cancelled"]').wait_for(timeout=30_000)


def test_activation_maximization_results_show_as_a_gallery(page, service, shots):
    page.goto(f"{service.url}/#jobs")
    page.wait_for_selector("body[data-ready=jobs]")
    start_flamingo_maximization(page)
    card = page.locator(".job-card", has_text="Activation maximization").first
    card.locator(".gallery-item img").first.wait_for(timeout=90_000)
    assert card.get_attribute("data-state") == "succeeded"
    item = card.locator(".gallery-item").first
    assert "flamingo" in item.inner_text() and "activation" in item.inner_text()
    assert item.locator("img").evaluate("image => image.naturalWidth") == 64


def test_job_forms_offer_the_chosen_models_methods_and_layers(page, service):
    """The model, method and layer fields of job forms were free text with nothing offered but models."""
    page.goto(f"{service.url}/#jobs")
    page.wait_for_selector("body[data-ready=jobs]")
    detail = httpx.get(f"{service.url}/v1/models/efficientnet_lite0", timeout=30).json()

    def offered(list_id: str) -> list[str]:
        return page.evaluate("(id) => [...document.getElementById(id).options].map((o) => o.value)", list_id)

    form = page.locator("#explain-dataset-form")
    assert form.locator("input[name=method]").get_attribute("list") == "explain-dataset-form-methods"
    assert form.locator("input[name=layer]").get_attribute("list") == "explain-dataset-form-layers"
    page.wait_for_function("document.getElementById('explain-dataset-form-layers').options.length > 0")
    assert offered("explain-dataset-form-methods") == detail["methods"]
    assert offered("explain-dataset-form-layers") == detail["layers"]
    assert page.locator("#maximize-form input[name='target.layer']").get_attribute("list") == "maximize-form-layers"
    page.wait_for_function("document.getElementById('maximize-form-layers').options.length > 0")
    # another model: its own (an unknown one offers nothing)
    page.evaluate("""() => { const input = document.querySelector("#explain-dataset-form input[name=model]");
                              input.value = 'no-such-model'; input.dispatchEvent(new Event('change')); }""")
    page.wait_for_function("document.getElementById('explain-dataset-form-layers').options.length === 0")


def test_a_method_option_is_sent_as_typed_and_a_value_the_service_refuses_is_named(page, service, photos):
    """An option typed as 2.5 was sent as 2 (parseInt); the service names what it cannot take."""
    open_explain(page, service, photos / "chelsea.jpg")
    page.select_option("#method-select", "integrated_gradients")
    steps = page.locator("#method-options input[name=steps]")
    steps.fill("2.5")  # parseInt sent 2, which the service took
    page.click("#explain-btn")
    problem = page.locator(".problem", has_text="steps").first
    problem.wait_for()
    assert "integer" in problem.inner_text()
    steps.fill("4")
    explain(page)


def test_a_number_field_given_words_says_so_before_anything_is_sent(page, service):
    """A class typed as its name went as null (Number("flamingo") is NaN), and the answer named a
    field the user never saw: "target.classes.0: Input should be a valid integer"."""
    page.goto(f"{service.url}/#jobs")
    page.wait_for_selector("body[data-ready=jobs]")
    page.click('[data-jobform="activation-maximization"]')
    form = page.locator("#maximize-form")
    assert "channels of layer" in form.inner_text() and "`" not in form.inner_text()  # the API's Markdown marks
    sent = []
    page.on("request", lambda request: sent.append(request.url) if request.method == "POST" else None)
    classes = form.locator('[name="target.classes"]')  # a list, typed as text (a number field takes no words)
    for typed in ("flamingo", "130, 12abc"):
        classes.fill(typed)
        form.locator("button[type=submit]").click()
        word = typed.split(", ")[-1]
        form.locator(".problem", has_text=f'"{word}" is not a whole number').wait_for(timeout=5000)
    assert not sent


def test_models_view_lists_every_spec(page, service, shots):
    page.goto(f"{service.url}/#models")
    page.wait_for_selector('.model-card[data-model="efficientnet_lite0"]')
    card = page.locator('.model-card[data-model="efficientnet_lite0"]')
    text = card.inner_text()
    for expected in ("efficientnet_lite0", "224 × 224", "1,000", "centre crop 224", "gradcam", "v1",
                     "a forward counts 1 (forwards of efficientnet_lite0 at 224)"):
        assert expected in text, expected
    page.screenshot(path=str(shots / "models-laptop.png"))


def resnet18_weights(path: Path, classes: int) -> Path:
    """A resnet18 state dict with `classes` outputs (random weights), as .safetensors."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=classes)
    save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(path))
    return path


def model_options(page) -> list[str]:
    return page.evaluate("[...document.querySelectorAll('#model-select option')].map((option) => option.value)")


def test_models_are_uploaded_pinned_and_deleted_from_the_models_view(page, service, tmp_path, shots):
    """The page could only read models: it uploads safetensors (with an architecture) or ONNX,
    pins a version and deletes a version or a model, each after a confirm step; the API's
    refusals show as problems, and the explain picker follows every change."""
    weights = resnet18_weights(tmp_path / "resnet18.safetensors", classes=3)
    (tmp_path / "labels.txt").write_text("ant\nbee\ncicada\n")
    (tmp_path / "tiny.onnx").write_bytes(onnx_classifier().SerializeToString())
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    page.goto(f"{service.url}/#explain")   # the explain view's picker is there, to be kept up to date
    page.wait_for_function("document.querySelector('#method-select').options.length > 0")
    page.click('[data-view="models"]')
    page.wait_for_selector("body[data-ready=models]")
    page.locator(".upload-panel > summary").click()
    form = page.locator("#model-upload-form")
    message = form.locator("#upload-message")

    # safetensors weights: the architecture, the file, labels and an input size
    form.locator("#upload-name").fill("web-upload")
    form.locator("#upload-architecture").fill("resnet18")
    form.locator("#upload-file").set_input_files(str(weights))
    form.locator("#upload-labels").set_input_files(str(tmp_path / "labels.txt"))
    form.locator(".more.options > summary").click()
    form.locator('[name="input_size"]').fill("64")
    form.get_by_role("button", name="Upload").click()
    message.locator(".ok").wait_for(timeout=120_000)
    assert "Uploaded web-upload@1" in message.inner_text()
    card = page.locator('.model-card[data-model="web-upload"]')
    card.wait_for()
    text = card.inner_text()
    assert "resnet18" in text and "64 × 64" in text, text
    described = httpx.get(f"{service.url}/v1/models/web-upload", timeout=60).json()
    assert described["labels"] == ["ant", "bee", "cicada"] and described["input_size"] == 64

    # an ONNX file as its second version: no architecture asked for
    form.locator('input[name="format"][value="onnx"]').check()
    assert form.locator("#upload-architecture").is_hidden() and form.locator('[name="cam_layer"]').is_hidden()
    assert form.locator("#upload-file").get_attribute("accept") == ".onnx"
    form.locator("#upload-name").fill("web-upload")
    form.locator("#upload-file").set_input_files(str(tmp_path / "tiny.onnx"))
    form.locator('[name="input_size"]').fill("32")
    form.get_by_role("button", name="Upload").click()
    page.wait_for_function("document.querySelector('#upload-message .ok')?.textContent.includes('web-upload@2')",
                           timeout=120_000)
    page.wait_for_function("document.querySelectorAll('.model-card[data-model=\"web-upload\"] tbody tr').length === 2")
    assert {"web-upload", "web-upload@1", "web-upload@2"} <= set(model_options(page))   # read again, unasked

    # a refused upload shows the API's problem
    form.locator('input[name="format"][value="weights"]').check()
    form.locator("#upload-name").fill("web-broken")
    form.locator("#upload-architecture").fill("resnet18")
    form.locator("#upload-file").set_input_files(str(tmp_path / "broken.safetensors"))
    form.get_by_role("button", name="Upload").click()
    expected = httpx.post(f"{service.url}/v1/models", data={"name": "web-broken", "architecture": "resnet18"},
                          files={"weights": ("broken.safetensors", b"not a safetensors file")}, timeout=60).json()
    problem = message.locator(".problem")
    problem.wait_for()
    assert expected["status"] == 422 and expected["detail"] in problem.inner_text() and "422" in problem.inner_text()

    # pin version 1: asked first
    card.get_by_role("button", name="Pin web-upload@1").click()
    assert "From now on web-upload means web-upload@1" in card.locator(".confirm").inner_text()
    card.locator(".confirm").get_by_role("button", name="Pin v1").click()
    card.locator('tr[data-version="1"] .tag', has_text="pinned").wait_for()
    assert httpx.get(f"{service.url}/v1/models/web-upload/versions", timeout=30).json()["pinned"] == 1
    page.screenshot(path=str(shots / "models-manage-laptop.png"), full_page=True)
    card.get_by_role("button", name="Unpin web-upload").click()  # and unpinned: the newest again
    assert "means its newest version" in card.locator(".confirm").inner_text()
    card.locator(".confirm").get_by_role("button", name="Unpin").click()
    card.get_by_role("button", name="Pin web-upload@1").wait_for()
    assert httpx.get(f"{service.url}/v1/models/web-upload/versions", timeout=30).json()["pinned"] is None

    # delete version 2: cancelled, then confirmed
    card.get_by_role("button", name="Delete web-upload@2").click()
    card.locator(".confirm").get_by_role("button", name="Cancel").click()
    assert card.locator(".confirm").count() == 0
    assert len(httpx.get(f"{service.url}/v1/models/web-upload/versions", timeout=30).json()["data"]) == 2
    card.get_by_role("button", name="Delete web-upload@2").click()
    card.locator(".confirm").get_by_role("button", name="Delete v2").click()
    page.wait_for_function("document.querySelectorAll('.model-card[data-model=\"web-upload\"] tbody tr').length === 1")
    assert [v["version"] for v in httpx.get(f"{service.url}/v1/models/web-upload/versions", timeout=30).json()["data"]] == [1]
    page.wait_for_function("![...document.querySelectorAll('#model-select option')].some((o) => o.value === 'web-upload@2')")

    # a built-in model offers neither (the API would refuse them, 409)
    builtin = page.locator('.model-card[data-model="efficientnet_lite0"]')
    assert builtin.locator("tbody tr").count() == 1 and builtin.get_by_role("link", name="Explain", exact=True).count() == 1
    assert builtin.locator("button", has_text=re.compile("Pin|Unpin|Delete")).count() == 0

    # the whole model
    card.get_by_role("button", name="Delete model web-upload").click()
    card.locator(".confirm").get_by_role("button", name="Delete model").click()
    card.wait_for(state="detached")
    assert "web-upload" not in [m["id"] for m in httpx.get(f"{service.url}/v1/models", timeout=30).json()["data"]]
    page.wait_for_function("![...document.querySelectorAll('#model-select option')].some((o) => o.value.startsWith('web-upload'))")


def test_images_over_one_requests_limit_are_explained_in_smaller_requests(page, service, tmp_path):
    # five 12.8 MB photos of noise: 64 MB in one request, over the 50 MB a request may hold
    noise = np.random.default_rng(0).integers(0, 256, (2600, 2600, 3), dtype=np.uint8)
    paths = []
    for index in range(5):
        paths.append(tmp_path / f"large-{index}.jpg")
        Image.fromarray(np.roll(noise, index, axis=0)).save(paths[-1], "JPEG", quality=100)
    assert sum(path.stat().st_size for path in paths) > 50 * 1024 * 1024
    page.goto(f"{service.url}/#explain")
    page.wait_for_selector("body[data-ready=explain]")
    page.wait_for_function("document.querySelector('#method-select').options.length > 0")
    page.select_option("#method-select", "cam")
    answers: list[int] = []
    page.on("response", lambda response: answers.append(response.status) if response.url.endswith("/explain") else None)
    page.set_input_files("#file-input", [str(path) for path in paths])
    page.click("#explain-btn")
    page.wait_for_function("document.querySelectorAll('.result-card .map-canvas[data-target]').length === 5",
                           timeout=120_000)
    assert answers == [413, 200, 200], answers  # then halves: 3 photos (38 MB) and 2
    assert page.locator(".results .problem, .card-error .problem").count() == 0


def test_a_data_sets_left_out_files_are_listed_with_why_on_a_click(page, service, tmp_path):
    buffer = io.BytesIO(tiny_dataset(tmp_path).read_bytes())
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("pets/cat/broken.jpg", b"this is a text file, not a JPEG\n")
    created = httpx.post(f"{service.url}/v1/datasets", files=[upload(buffer.getvalue(), "pets.zip", "application/zip")],
                         data={"name": "with-a-broken-file"}, timeout=60)
    assert created.status_code == 201, created.text
    (reason,) = created.json()["unreadable"]
    page.goto(f"{service.url}/#jobs")
    page.wait_for_selector("body[data-ready=jobs]")
    entry = page.locator(".dataset-list li", has_text="with-a-broken-file")
    summary = entry.locator(".ds-left-out summary")
    assert summary.inner_text() == "1 file left out"
    listed = entry.locator(".ds-left-out li")
    assert not listed.is_visible()
    summary.focus()
    page.keyboard.press("Enter")
    assert listed.inner_text() == f"{reason['file']}: {reason['reason']}"


def test_a_thumbnail_is_chosen_from_the_keyboard(page, service, photos):
    open_explain(page, service, photos / "chelsea.jpg")
    page.set_input_files("#file-input", str(photos / "coffee.jpg"))
    thumbs = page.locator("#thumbs .thumb")
    thumbs.nth(1).wait_for()
    thumbs.nth(0).click()
    assert "active" in thumbs.nth(0).get_attribute("class")
    page.keyboard.press("Tab")  # from the first thumbnail to its remove button
    page.keyboard.press("Tab")  # to the second thumbnail
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Show coffee.jpg"
    page.keyboard.press("Enter")
    assert "active" in thumbs.nth(1).get_attribute("class")
    assert "active" not in thumbs.nth(0).get_attribute("class")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press(" ")
    assert "active" in thumbs.nth(0).get_attribute("class")
    assert thumbs.count() == 2  # the keys chose; they removed nothing


def test_phone_width_layout_holds(browser, service, photos, shots):
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True, bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        open_explain(page, service, photos / "chelsea.jpg")
        explain(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        # the result scrolled into view: below the form, it was off screen
        top = page.evaluate("document.querySelector('.result-card').getBoundingClientRect().top")
        assert 0 <= top < PHONE["height"], top
        page.screenshot(path=str(shots / "explain-phone.png"), full_page=True)
        page.goto(f"{service.url}/#jobs")
        page.wait_for_selector("body[data-ready=jobs]")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.screenshot(path=str(shots / "jobs-phone.png"), full_page=True)
        page.goto(f"{service.url}/#models")
        page.wait_for_selector(".model-card")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.screenshot(path=str(shots / "models-phone.png"))
    finally:
        context.close()
    assert not errors, errors


def test_long_names_keep_the_layout_within_a_narrow_phone(browser, service, photos, tmp_path, shots):
    long_class = ("a_class_folder_name_without_a_space_" * 2)[:64]  # the longest allowed
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, photo in ((long_class, chelsea()), ("coffee", coffee())):
            for index in range(2):
                archive.writestr(f"set/{name}/{index}.jpg", encode(photo.resize((96, 64))))
    name = ("a-data-set-name-without-a-space-" * 2)[:64]
    created = httpx.post(f"{service.url}/v1/datasets", files=[upload(buffer.getvalue(), "set.zip", "application/zip")],
                         data={"name": name}, timeout=60)
    assert created.status_code == 201, created.text
    photo = tmp_path / ("a-photo-whose-file-name-goes-on-and-on-with-no-space-to-break-at-all" * 2 + ".jpg")
    photo.write_bytes((photos / "chelsea.jpg").read_bytes())
    narrow = {"width": 320, "height": 640}
    context = browser.new_context(viewport=narrow, device_scale_factor=2, is_mobile=True, has_touch=True, bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # what reaches past the screen's right edge, not counting what scrolls within a box of its own
    wider = """() => [...document.querySelectorAll('body *')].filter((e) => {
      if (!e.getClientRects().length || e.getBoundingClientRect().right <= document.documentElement.clientWidth + 1) return false;
      for (let up = e.parentElement; up; up = up.parentElement) if (getComputedStyle(up).overflowX !== 'visible') return false;
      return true;
    }).map((e) => e.className || e.tagName).slice(0, 8)"""
    try:
        open_explain(page, service, photo)
        explain(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= narrow["width"], page.evaluate(wider)
        page.goto(f"{service.url}/#jobs")
        page.wait_for_selector("body[data-ready=jobs]")
        page.get_by_text(name[:40]).first.wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= narrow["width"], page.evaluate(wider)
        # the job forms' tabs wrap rather than clip their labels
        for tab in page.locator(".segmented button").all():
            assert tab.evaluate("(b) => b.scrollHeight <= b.clientHeight && b.scrollWidth <= b.clientWidth"), tab.inner_text()
        page.screenshot(path=str(shots / "jobs-long-names-320.png"), full_page=True)
    finally:
        context.close()
    assert not errors, errors


def test_the_page_runs_under_its_content_security_policy(browser, service, photos):
    """Each view, and an explanation drawn, with nothing refused by the policy (no inline script,
    images from data: and blob: URLs, calls to its own origin)."""
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text) if "Content Security Policy" in message.text
            else None)
    page.goto(f"{service.url}/#explain")
    page.wait_for_selector("body[data-ready=explain]")
    page.wait_for_selector("#method-select option", state="attached")
    page.set_input_files("#file-input", str(photos / "chelsea.jpg"))
    page.wait_for_selector(".result-card img.original")
    explain(page)
    for view in ("jobs", "models"):
        page.goto(f"{service.url}/#{view}")
        page.wait_for_selector(f"body[data-ready={view}]")
    context.close()
    assert problems == []


def test_no_other_page_may_show_the_web_page_in_a_frame(browser, service):
    """A page of another port of the same host framed the web page and, with the key it had
    stored, deleted a model at two clicks (clickjacking): now the frame stays empty."""
    context = browser.new_context()
    page = context.new_page()
    page.set_content(f'<iframe src="{service.url}/" width="900" height="600"></iframe>')
    page.wait_for_timeout(3000)
    framed = page.frames[1]
    assert not framed.url.startswith(service.url), framed.url  # Chromium's error page instead
    assert framed.locator("#app, nav, button").count() == 0
    context.close()


def test_the_api_docs_render_with_nothing_from_outside(browser, service, shots):
    context = browser.new_context()
    page = context.new_page()
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text
            else None)
    outside: list[str] = []

    def local_only(route) -> None:
        if route.request.url.startswith(service.url):
            route.continue_()
        else:
            outside.append((route.request.resource_type, route.request.url))
            route.abort()

    page.route("**/*", local_only)
    page.goto(f"{service.url}/docs")
    page.wait_for_selector('.opblock-summary-path[data-path="/v1/models/{model}/explain"]', timeout=30_000)
    page.screenshot(path=str(shots / "api-docs.png"))
    page.goto(f"{service.url}/redoc")
    page.wait_for_selector('h1:has-text("Gazer (0.1.0)")', timeout=30_000)
    assert page.get_by_text("/v1/models/{model}/explain").count() > 0
    context.close()
    # ReDoc's footer asks for Redocly's logo, an image: the pages need nothing else from outside
    assert [(kind, url) for kind, url in outside if kind != "image"] == []
    assert [text for text in refused if "Loading the image" not in text] == []  # their policy lets them run
