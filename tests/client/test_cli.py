"""The `gazer` command as a real subprocess against the live service (and, where the service's own answers
do not matter, against fake_service's)."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from gazer import grid
from schemas.api_keys import create_key
from support import chelsea, coffee
from tests.api.test_bad_input import png_declaring
from tests.api.test_model_refusals import onnx_classifier
from tests.client.fake_service import ROOT, FakeService, gazer_at, job, json_answer
from tests.live_service import LiveService

CAT_CLASSES = {str(index) for index in range(281, 286)}
TINY_FINE_TUNE = ["--strategy", "feature_extraction", "--epochs", "1", "--batch-size", "4", "--input-size", "64",
                  "--early-stopping-patience", "20", "--set", "augmentation.rotation=0", "--set", "head.dropout=0"]


def cli_env(live) -> dict[str, str]:
    return {**os.environ, "GAZER_URL": live.url}


def gazer_cli(live, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m gazer ARGS`, the service's URL from GAZER_URL."""
    return subprocess.run([sys.executable, "-m", "gazer", *args], env=cli_env(live), capture_output=True,
                          text=True, timeout=timeout)


def pet_folder(root: Path) -> Path:
    """cat/ and coffee/, four variants of one real photo each (mirrored, cropped), small."""
    folder = root / "pets"
    for name, photo in (("cat", chelsea()), ("coffee", coffee())):
        (folder / name).mkdir(parents=True)
        width, height = photo.size
        variants = [photo, ImageOps.mirror(photo), photo.crop((0, 0, width * 3 // 4, height)),
                    photo.crop((width // 4, 0, width, height))]
        for index, variant in enumerate(variants):
            variant.resize((96, 96)).save(folder / name / f"{index}.png")
    (folder / ".DS_Store").write_bytes(b"not a photo")  # hidden files are left out of the archive
    return folder


@pytest.fixture(scope="module")
def dataset_id(live, tmp_path_factory):
    folder = pet_folder(tmp_path_factory.mktemp("dataset"))
    uploaded = gazer_cli(live, "datasets", "upload", str(folder), "--name", "pets", "--quiet")
    assert uploaded.returncode == 0, uploaded.stderr
    return uploaded.stdout.strip()


def test_datasets_upload_zips_a_folder(live, gazer, dataset_id):
    dataset = gazer.dataset(dataset_id)
    assert dataset.name == "pets" and dataset.counts == {"cat": 4, "coffee": 4} and not dataset.unreadable
    listed = gazer_cli(live, "datasets", "ls")
    assert listed.returncode == 0 and dataset_id in listed.stdout


def test_predict_prints_a_table(live, photos):
    done = gazer_cli(live, "predict", str(photos["chelsea"]), str(photos["coffee"]), "--top-k", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "model efficientnet_lite0@1"
    assert lines[1].split() == ["image", "rank", "class", "label", "probability"]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 4 and [row[:2] for row in rows] == [["chelsea.jpg", "1"], ["chelsea.jpg", "2"],
                                                           ["coffee.jpg", "1"], ["coffee.jpg", "2"]]
    assert rows[0][2] in CAT_CLASSES and 0 < float(rows[0][-1]) <= 1


def test_predict_of_several_images_predicts_every_one_it_can_and_names_each_refused(live, photos, tmp_path):
    """One unreadable file made the whole command a 422, and the good photos got no table."""
    broken, empty, large = tmp_path / "broken.jpg", tmp_path / "empty.jpg", tmp_path / "large.png"
    broken.write_bytes(b"not a picture")
    empty.write_bytes(b"")
    large.write_bytes(png_declaring(8000, 8000))
    done = gazer_cli(live, "predict", str(photos["chelsea"]), str(broken), str(photos["coffee"]), str(empty),
                     str(large), "--top-k", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[2:]] == ["chelsea.jpg", "coffee.jpg"]
    said = done.stderr.splitlines()  # each named as given, as explain names them (not "file 1 ('broken.jpg')")
    assert said[0] == f"gazer: 422 Unprocessable content: {broken}: the file is not an image in a supported " \
                      "format (JPEG, PNG, WEBP, BMP, GIF, TIFF)", said
    assert said[1] == f"gazer: 422 Unprocessable content: {empty}: the file is empty", said
    assert said[2].startswith(f"gazer: 413 Content too large: {large}: image is 8000x8000"), said  # its own status
    assert said[3] == f"gazer: 3 of 5 images not predicted: {broken}, {empty}, {large}", said


def test_models_labels_finds_a_class_by_name_and_a_url_may_leave_out_its_scheme(live, photos):
    found = gazer_cli(live, "models", "labels", "efficientnet_lite0", "TABBY")
    assert found.returncode == 0 and found.stdout.splitlines()[1].split()[:2] == ["281", "tabby,"], found.stdout
    assert gazer_cli(live, "models", "labels", "efficientnet_lite0", "no such thing").returncode == 1
    schemeless = subprocess.run([sys.executable, "-m", "gazer", "models", "ls"], capture_output=True, text=True,
                                env={**os.environ, "GAZER_URL": live.url.removeprefix("http://")}, timeout=60)
    assert schemeless.returncode == 0 and "efficientnet_lite0" in schemeless.stdout, schemeless.stderr
    folder = photos["chelsea"].parent
    for args in (["predict", str(folder)], ["explain", str(folder), "-o", os.devnull],
                 ["explain", str(photos["chelsea"]), str(folder), "-o", os.devnull],
                 ["compare", str(folder), "--methods", "cam", "-o", os.devnull]):
        refused = gazer_cli(live, *args)
        assert refused.returncode == 1 and f"{folder} is a folder; name its images" in refused.stderr, refused.stderr
    by_label = gazer_cli(live, "explain", str(photos["chelsea"]), "--target", "tabby", "-o", os.devnull)
    assert by_label.returncode == 0 and "class 281 tabby" in by_label.stdout, by_label.stdout + by_label.stderr
    several = gazer_cli(live, "explain", str(photos["chelsea"]), "--target", "cat", "-o", os.devnull)
    assert several.returncode != 0 and "classes of efficientnet_lite0 hold 'cat'" in several.stderr, several.stderr
    assert "30 'bullfrog, Rana catesbeiana'; " in several.stderr, several.stderr  # labels hold commas


def test_predict_as_json_explain_with_faithfulness_and_compare_checks_its_methods_first(live, photos, tmp_path):
    answered = gazer_cli(live, "predict", str(photos["chelsea"]), "--top-k", "2", "--json")
    assert answered.returncode == 0 and len(json.loads(answered.stdout)["results"][0]["predictions"]) == 2
    scored = gazer_cli(live, "explain", str(photos["chelsea"]), "--method", "cam", "--faithfulness",
                       "-o", str(tmp_path / "scored.png"))
    assert scored.returncode == 0 and "faithfulness: deletion 0." in scored.stdout, scored.stdout + scored.stderr
    refused = gazer_cli(live, "compare", str(photos["chelsea"]), "--methods", "cam,bogus", "-o", str(tmp_path / "g.png"))
    assert refused.returncode != 0 and "offers no method 'bogus'" in refused.stderr and "cam:" not in refused.stdout


def test_explain_writes_the_overlay(live, photos, tmp_path):
    done = gazer_cli(live, "explain", str(photos["chelsea"]), "--method", "gradcam", "--target", "281",
                     "-o", str(tmp_path / "overlay.png"))
    assert done.returncode == 0, done.stderr
    assert "class 281" in done.stdout
    overlay = Image.open(tmp_path / "overlay.png")
    assert overlay.format == "PNG" and overlay.size == chelsea().size
    for name, format_ in (("overlay.jpg", "JPEG"), ("overlay.webp", "WEBP")):  # the format the name says
        done = gazer_cli(live, "explain", str(photos["chelsea"]), "--resize", "stretch", "-o", str(tmp_path / name))
        assert done.returncode == 0, done.stderr
        assert Image.open(tmp_path / name).format == format_
    piped = subprocess.run([sys.executable, "-m", "gazer", "explain", str(photos["chelsea"]), "-o", "-", "--format",
                            "jpeg"], env=cli_env(live), capture_output=True, timeout=120)
    assert piped.returncode == 0 and b"-> standard output" in piped.stderr, piped.stderr
    assert Image.open(io.BytesIO(piped.stdout)).format == "JPEG"
    several = gazer_cli(live, "explain", str(photos["chelsea"]), str(photos["coffee"]), "-o", "-")
    assert several.returncode != 0 and "-o - writes one image's overlay" in several.stderr, several.stderr


def test_explain_of_several_images_writes_each_ones_pictures_into_folders(live, photos, tmp_path):
    overlays, heatmaps = tmp_path / "overlays", tmp_path / "maps"
    images = [str(photos["chelsea"]), str(photos["coffee"])]
    done = gazer_cli(live, "explain", *images, "--method", "cam", "--format", "webp", "--heatmap", str(heatmaps),
                     "-o", str(overlays))
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in overlays.iterdir()) == ["chelsea.webp", "coffee.webp"]
    assert sorted(path.name for path in heatmaps.iterdir()) == ["chelsea.png", "coffee.png"]
    overlay = Image.open(overlays / "chelsea.webp")
    assert overlay.format == "WEBP" and overlay.size == chelsea().size
    assert Image.open(overlays / "coffee.webp").size == coffee().size
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["chelsea.jpg", "coffee.jpg"]
    twice = gazer_cli(live, "explain", images[0], images[0], "-o", str(tmp_path / "again"))
    assert twice.returncode != 0 and "two images are named 'chelsea'" in twice.stderr
    into_a_file = gazer_cli(live, "explain", *images, "-o", str(overlays / "chelsea.webp"))
    assert into_a_file.returncode != 0 and "name folders" in into_a_file.stderr
    # one image, as a glob of one matches: a folder (a new one named with a slash, or one that
    # exists) holds its pictures as it would several's; they were written as files named `new` and
    # `overlays`, or failed with "Is a directory"
    one = gazer_cli(live, "explain", images[0], "--method", "cam", "-o", f"{tmp_path / 'new'}/",
                    "--heatmap", f"{tmp_path / 'new-maps'}/")
    assert one.returncode == 0, one.stderr
    assert [path.name for path in (tmp_path / "new").iterdir()] == ["chelsea.png"]
    assert Image.open(tmp_path / "new-maps" / "chelsea.png").size == chelsea().size
    again = gazer_cli(live, "explain", images[1], "-o", str(overlays))
    assert again.returncode == 0, again.stderr
    assert Image.open(overlays / "coffee.png").format == "PNG"


def test_explain_of_several_images_explains_every_one_it_can_and_names_each_failure_as_given(live, photos, tmp_path):
    unreadable, missing = tmp_path / "notes" / "bad.jpg", tmp_path / "gone.jpg"
    unreadable.parent.mkdir()
    unreadable.write_bytes(b"this is not an image")
    images = [str(photos["chelsea"]), str(unreadable), str(missing), str(photos["coffee"])]
    done = gazer_cli(live, "explain", *images, "--method", "cam", "-o", str(tmp_path / "overlays"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert sorted(path.name for path in (tmp_path / "overlays").iterdir()) == ["chelsea.png", "coffee.png"]
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["chelsea.jpg", "coffee.jpg"]
    said = done.stderr.splitlines()
    assert said[0].startswith(f"gazer: 422 Unprocessable content: {unreadable}: "), said  # not "file 0 ('bad.jpg')"
    assert said[1:] == [f"gazer: {missing}: No such file or directory",
                        f"gazer: 2 of 4 images not explained: {unreadable}, {missing}"], said
    refused = gazer_cli(live, "explain", *images, "--method", "bogus", "-o", str(tmp_path / "none"))
    assert refused.returncode == 1 and refused.stderr.count("unknown method 'bogus'") == 1, refused.stderr  # once
    # a folder is made once there is a picture to put in it: a refusal left it empty
    alone = gazer_cli(live, "explain", str(unreadable), "-o", f"{tmp_path / 'unmade'}/")
    assert alone.returncode == 1 and not (tmp_path / "unmade").exists() and not (tmp_path / "none").exists()


def test_explain_and_compare_refuse_what_they_cannot_write_and_options_that_are_flags(live, photos, tmp_path):
    for args in (["explain", str(photos["chelsea"]), "-o", str(tmp_path / "x.gif")],
                 ["compare", str(photos["chelsea"]), "--methods", "cam", "-o", str(tmp_path / "x.bmp")]):
        refused = gazer_cli(live, *args)
        assert refused.returncode != 0 and "names no picture format" in refused.stderr, refused.stderr
    for args in (["explain", str(photos["chelsea"])], ["compare", str(photos["chelsea"]), "--methods", "cam"]):
        refused = gazer_cli(live, *args, "-o", str(tmp_path / "x.png"), "--format", "jpeg")  # JPEG in x.png was
        assert refused.returncode != 0 and "names a PNG file and --format says jpeg" in refused.stderr, refused.stderr
    for option in ("outputs=map", "method=saliency", "overlay_format=png", "file=x"):
        refused = gazer_cli(live, "explain", str(photos["chelsea"]), "--option", option, "-o", str(tmp_path / "x.png"))
        assert refused.returncode != 0 and "is for a method's own options" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    images = [str(photos["chelsea"]), str(photos["coffee"])]
    for pictures in (["-o", str(tmp_path / "x.png")],
                     ["-o", str(tmp_path / "x"), "--heatmap", str(tmp_path / "h.JPG")]):
        refused = gazer_cli(live, "explain", *images, *pictures)  # a folder named x.png was made
        assert refused.returncode == 1 and f"{pictures[-2]} {pictures[-1]} names a picture" in refused.stderr, \
            refused.stderr
    assert not list(tmp_path.iterdir())
    compared = gazer_cli(live, "compare", str(photos["chelsea"]), "--methods", "cam", "-o", str(tmp_path / "g.jpg"))
    assert compared.returncode == 0 and Image.open(tmp_path / "g.jpg").format == "JPEG", compared.stderr


def test_compare_writes_one_labelled_grid(live, photos, tmp_path):
    methods = ["cam", "gradcam", "saliency"]
    done = gazer_cli(live, "compare", str(photos["chelsea"]), "--methods", ",".join(methods),
                     "-o", str(tmp_path / "grid.png"))
    assert done.returncode == 0, done.stderr
    picture = Image.open(tmp_path / "grid.png")
    width, height = chelsea().size
    tile_height = round(height * grid.TILE_WIDTH / width)
    assert picture.format == "PNG"
    assert picture.size == (len(methods) * grid.TILE_WIDTH, tile_height + grid.LABEL_HEIGHT)
    pixels = np.asarray(picture.convert("L"), dtype=np.float32)
    tiles = [pixels[:tile_height, i * grid.TILE_WIDTH:(i + 1) * grid.TILE_WIDTH] for i in range(len(methods))]
    labels = [pixels[tile_height:, i * grid.TILE_WIDTH:(i + 1) * grid.TILE_WIDTH] for i in range(len(methods))]
    assert all(tile.std() > 10 for tile in tiles)  # a picture, not a blank
    assert np.abs(tiles[0] - tiles[2]).mean() > 1  # cam and saliency look different
    assert all((label < 128).sum() > 50 for label in labels)  # dark text in every label strip
    assert all(f"{method}: class" in done.stdout for method in methods)
    at_a_layer = gazer_cli(live, "compare", str(photos["chelsea"]), "--methods", "gradcam,saliency", "--layer",
                           "blocks.15", "-o", str(tmp_path / "layer.png"))  # the layer goes to gradcam alone
    assert at_a_layer.returncode == 0, at_a_layer.stderr
    assert "saliency takes no layer" in at_a_layer.stdout and "gradcam takes" not in at_a_layer.stdout
    with_cam = gazer_cli(live, "compare", str(photos["chelsea"]), "--methods", "cam,gradcam", "--layer",
                         "blocks.15", "-o", str(tmp_path / "cam.png"))  # cam explains at the classifier's layer only
    assert with_cam.returncode == 0, with_cam.stderr
    assert "cam: cam works only at the layer that feeds the classifier, 'head'; shown at its own layer" \
        in with_cam.stdout, with_cam.stdout
    # a method's options go to the methods that take them (compare took none)
    with_steps = gazer_cli(live, "compare", str(photos["chelsea"]), "--methods", "gradcam,integrated_gradients",
                           "--option", "steps=4", "--option", "baseline=blur", "-o", str(tmp_path / "ig.png"))
    assert with_steps.returncode == 0, with_steps.stderr
    assert "gradcam takes no option steps, baseline: shown without" in with_steps.stdout, with_steps.stdout
    assert "integrated_gradients takes" not in with_steps.stdout
    wrong = gazer_cli(live, "compare", str(photos["chelsea"]), "--methods", "integrated_gradients",
                      "--option", "steps=0", "-o", str(tmp_path / "no.png"))  # a value out of bounds is still refused
    assert wrong.returncode == 1 and "steps" in wrong.stderr, wrong.stderr
    for typo, said in ((["--option", "stepz=4"], "none of gradcam, integrated_gradients takes option 'stepz'"),
                       (["--layer", "blocks.155"], "efficientnet_lite0 has no layer 'blocks.155'")):
        refused = gazer_cli(live, "compare", str(photos["chelsea"]), "--methods", "gradcam,integrated_gradients",
                            *typo, "-o", str(tmp_path / "typo.png"))
        assert refused.returncode == 1 and said in refused.stderr, refused.stderr


def test_compare_writes_to_standard_output_and_takes_a_format_as_explain_does(live, photos, tmp_path):
    piped = subprocess.run([sys.executable, "-m", "gazer", "compare", str(photos["chelsea"]), "--methods", "cam",
                            "-o", "-", "--format", "webp"], capture_output=True, timeout=120, cwd=tmp_path,
                           env={**cli_env(live), "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert piped.returncode == 0, piped.stderr
    assert Image.open(io.BytesIO(piped.stdout)).format == "WEBP" and not list(tmp_path.iterdir())  # no file "-"
    assert b"cam: class" in piped.stderr and b"-> standard output" in piped.stderr, piped.stderr
    named = gazer_cli(live, "compare", str(photos["chelsea"]), "--methods", "cam", "-o", str(tmp_path / "g.gif"),
                      "--format", "jpeg")  # the format given, whatever the name
    assert named.returncode == 0 and Image.open(tmp_path / "g.gif").format == "JPEG", named.stderr


def test_models_show_says_how_many_layers_and_as_json_lists_them(live, gazer):
    shown = gazer_cli(live, "models", "show", "efficientnet_lite0")
    layers = gazer.model("efficientnet_lite0").layers
    assert shown.returncode == 0 and f"{len(layers)} targetable layers" in shown.stdout, shown.stderr
    assert "a forward counts 1 in the explain budget" in shown.stdout, shown.stdout
    described = gazer_cli(live, "models", "show", "efficientnet_lite0", "--json")
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["layers"] == layers and len(layers) > 100


def test_finetune_follows_to_the_end_and_the_model_is_listed(live, dataset_id):
    done = gazer_cli(live, "finetune", "--dataset", dataset_id, "--output", "pets", *TINY_FINE_TUNE, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    # not on a terminal: a line each tenth of the way and each phase, where the bar's redraws ran into one line
    told = done.stderr.splitlines()
    assert "\r" not in done.stderr and 3 < len(told) < 40, done.stderr
    assert all(line.startswith("job ") and "% " in line for line in told) and " 100% succeeded" in told[-1], told
    assert "succeeded: model pets@1" in done.stdout
    listed = gazer_cli(live, "models", "ls")
    assert listed.returncode == 0
    assert any(line.split()[:2] == ["pets", "1"] for line in listed.stdout.splitlines()), listed.stdout
    shown = gazer_cli(live, "models", "show", "pets")
    assert shown.returncode == 0 and "2 classes" in shown.stdout
    assert "pinned" not in done.stdout
    assert gazer_cli(live, "models", "pin", "pets", "1").returncode == 0
    again = gazer_cli(live, "finetune", "--dataset", dataset_id, "--output", "pets", *TINY_FINE_TUNE, timeout=240)
    assert "succeeded: model pets@2" in again.stdout, again.stdout + again.stderr
    assert "pets still means pets@1 (pinned)" in again.stdout and "gazer models pin pets 2" in again.stdout


def test_a_model_published_under_a_name_that_means_another_version_is_said_pinned_only_if_it_is(gazer, capsys):
    from gazer.cli.following import print_plain_name_elsewhere
    from schemas.jobs import Job

    for _ in range(2):  # as if a fine-tune published @1 and an upload @2 came while it was followed
        gazer.upload_model("cli-unpinned", onnx=onnx_classifier().SerializeToString(), input_size=32)
    ended = Job(id="j", type="fine-tune", state="succeeded", result={"model": {"id": "cli-unpinned", "version": 1}},
                error=None, params={}, attempts=1, progress={"fraction": 1.0}, cancel_requested=False, created_at=0.0,
                started_at=1.0, finished_at=2.0)
    try:
        assert gazer.versions("cli-unpinned").pinned is None
        print_plain_name_elsewhere(gazer, ended)
        assert capsys.readouterr().out == ("cli-unpinned means its newest version, cli-unpinned@2, published since: "
                                           "ask for cli-unpinned@1\n")
        gazer.pin("cli-unpinned", 2)
        print_plain_name_elsewhere(gazer, ended)
        assert capsys.readouterr().out.startswith("cli-unpinned still means cli-unpinned@2 (pinned): ")
    finally:
        gazer.delete_model("cli-unpinned")


def test_follow_names_a_model_only_for_a_fine_tune_and_a_closed_pipe_is_quiet(live, gazer):
    job = gazer.activation_maximization({"class": 130}, steps=2)
    followed = gazer_cli(live, "jobs", "follow", job.id)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.strip() == f"job {job.id} succeeded; its result: gazer jobs show {job.id}"
    # as `gazer jobs show ID | head` where head has gone before the answer came
    shown = subprocess.Popen([sys.executable, "-m", "gazer", "jobs", "show", job.id], env=cli_env(live),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shown.stdout.close()
    assert shown.wait(timeout=60) == 1 and shown.stderr.read() == b""


def test_ctrl_c_leaves_the_job_running_and_says_how_to_cancel(live, gazer, dataset_id):
    process = subprocess.Popen([sys.executable, "-m", "gazer", "finetune", "--dataset", dataset_id,
                                "--output", "pets-interrupted", *TINY_FINE_TUNE, "--epochs", "500",
                                "--early-stopping-patience", "500"],
                               env=cli_env(live), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               # a shell's background job would inherit SIGINT ignored
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stderr = bytearray()

    def read_stderr() -> None:  # the bar is redrawn with \r, never a newline: read what comes
        for chunk in iter(lambda: process.stderr.read1(4096), b""):
            stderr.extend(chunk)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while b"queued" not in stderr and b"running" not in stderr:  # the first event's bar
            assert time.monotonic() < deadline and process.poll() is None, stderr.decode()
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=5)
    job_id = process.stdout.read().decode().split()[1]
    assert f"job {job_id} is still running; cancel it with: gazer jobs cancel {job_id}" in stderr.decode()
    job = gazer.job(job_id)
    assert job.state in ("queued", "running") and not job.cancel_requested

    assert gazer_cli(live, "jobs", "ls").stdout.count(job_id) == 1
    for named in ("finetune", "fine-tune"):  # the command's name, or the API's
        assert gazer_cli(live, "jobs", "ls", "--type", named).stdout.count(job_id) == 1
    assert job_id not in gazer_cli(live, "jobs", "ls", "--type", "maximize").stdout
    cancelled = gazer_cli(live, "jobs", "cancel", job_id)
    assert cancelled.returncode == 0 and job_id in cancelled.stdout
    assert gazer.wait(job_id, timeout=120).state == "cancelled"
    shown = gazer_cli(live, "jobs", "show", job_id)
    assert shown.returncode == 0 and '"state": "cancelled"' in shown.stdout


def test_a_label_needs_the_predict_scope_to_be_looked_up_and_a_class_index_does_not(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.json"
    jobs_only, _ = create_key(keys, ["jobs"], "cli tests, jobs only")
    with LiveService(tmp_path_factory.mktemp("keyed-service"), api_keys=keys) as keyed:
        def maximize(given: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "gazer", "--api-key", jobs_only, "maximize", "--class", given,
                                   "--option", "steps=2", "--option", "size=64", "--no-follow"], env=cli_env(keyed),
                                  capture_output=True, text=True, timeout=120)

        by_label, by_index = maximize("flamingo"), maximize("130")
    assert by_label.returncode == 1 and "needs a key with the 'predict' scope" in by_label.stderr, by_label.stderr
    assert "give the class by its index (e.g. --class 130)" in by_label.stderr, by_label.stderr
    assert by_index.returncode == 0 and by_index.stdout.strip(), by_index.stderr  # the job's id


def test_a_boolean_field_is_a_bare_flag_and_help_names_the_built_in_url():
    from gazer.cli.parser import build_parser

    def bfloat16(*flags: str):
        return build_parser().parse_args(["finetune", "--dataset", "d", "--output", "o", *flags]).bfloat16

    assert (bfloat16("--bfloat16"), bfloat16("--no-bfloat16"), bfloat16()) == (True, False, None)
    shown = subprocess.run([sys.executable, "-m", "gazer", "--help"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "GAZER_URL": "http://elsewhere:9"})
    assert "default $GAZER_URL, else http://127.0.0.1:8000" in " ".join(shown.stdout.split()), shown.stdout


def test_mean_and_std_take_three_numbers_as_arguments_or_as_the_apis_comma_list(capsys):
    from gazer.cli.parser import build_parser

    def parsed(*flags: str):
        found = build_parser().parse_args(["models", "upload", "mine", "--onnx", "m.onnx", *flags])
        return found.mean, found.std

    assert parsed("--mean", "0.5", "0.4", "0.3", "--std", "0.2,0.2,0.2") == ([0.5, 0.4, 0.3], [0.2, 0.2, 0.2])
    assert parsed("--mean", "0.5,", "0.4,", "0.3") == ([0.5, 0.4, 0.3], None) and parsed() == (None, None)
    for wrong in (["0.5,0.5"], ["0.5", "a", "0.5"]):
        with pytest.raises(SystemExit):
            parsed("--std", *wrong)
        assert "argument --std: three numbers, as 0.5 0.5 0.5 or 0.5,0.5,0.5" in capsys.readouterr().err


def test_a_refusals_long_list_of_valid_values_is_cut_short(live, photos):
    refused = gazer_cli(live, "explain", str(photos["chelsea"]), "--method", "gradcam", "--layer", "nowhere",
                        "-o", os.devnull)
    assert refused.returncode == 1 and "no targetable layer 'nowhere'" in refused.stderr, refused.stderr
    valid = next(line for line in refused.stderr.splitlines() if line.strip().startswith("valid:"))
    assert valid.count(",") == 20 and valid.endswith("more)"), valid


def test_an_unknown_option_is_shown_the_options_not_explains_own_fields(live, photos):
    """The API lists every field its explain route takes; --option may name only a method's."""
    refused = gazer_cli(live, "explain", str(photos["chelsea"]), "--option", "stepz=4", "-o", os.devnull)
    assert refused.returncode == 1 and "unknown field 'stepz'" in refused.stderr, refused.stderr
    valid = next(line for line in refused.stderr.splitlines() if line.strip().startswith("valid:"))
    shown = valid.split(":", 1)[1].strip().split(", ")
    assert {"baseline", "steps", "samples", "masks", "window"} <= set(shown), valid  # the methods' options
    assert not {"file", "method", "target", "layer", "outputs", "top_k", "resize", "faithfulness"} & set(shown), valid


def test_a_class_without_a_label_is_named_once():
    from gazer.cli.output import class_name

    assert (class_name(2, "2"), class_name(281, "tabby")) == ("2", "281 tabby")  # not "class 2 2"


def test_set_that_gives_a_field_both_a_value_and_fields_is_a_usage_error():
    """`--set head=1 --set head.hidden=64` was a TypeError, shown as the server's fault."""
    from gazer.cli.arguments import key_values

    assert key_values(["head.hidden=64", "head.dropout=0.2"], "--set") == {"head": {"hidden": 64, "dropout": 0.2}}
    for pairs in (["head=1", "head.hidden=64"], ["head.hidden=64", "head=1"]):
        with pytest.raises(SystemExit, match="head"):
            key_values(pairs, "--set")


def test_progress_names_the_phase_and_the_images_done():
    from gazer.cli.following import describe_progress
    from schemas.jobs import Job

    job = Job(id="j", type="fine-tune", state="running", result=None, error=None, params={"epochs": 3}, attempts=1,
              progress={"fraction": 0.0, "phase": "loading images", "images": 64, "total": 900},
              cancel_requested=False, created_at=0.0, started_at=1.0, finished_at=None)
    assert describe_progress(job) == "running loading images 64/900 images"


def test_a_sweeps_progress_counts_its_trials_and_names_the_best_so_far():
    from gazer.cli.following import describe_progress
    from schemas.jobs import Job

    def sweep(trials: dict, best: dict | None, metric: str = "val_accuracy") -> Job:  # as infra/sweeps.py reports
        return Job(id="s", type="sweep", state="running", result=None, error=None, params={"metric": metric},
                   attempts=1, progress={"fraction": trials["done"] / trials["total"], "phase": "trials",
                                         "trials": trials, "best": best},
                   cancel_requested=False, created_at=0.0, started_at=1.0, finished_at=None)

    counts = {"total": 3, "done": 2, "running": 1, "pruned": 0, "succeeded": 2, "failed": 0}
    best = {"number": 1, "job_id": "t1", "value": 0.75, "params": {"lr": 0.01}}
    assert describe_progress(sweep(counts, best)) == \
        "running 2/3 trials done, 1 running, best val_accuracy 0.750 (trial 1)"
    started = {**counts, "done": 0, "succeeded": 0}
    assert describe_progress(sweep(started, None, "val_loss")) == "running 0/3 trials done, 1 running"
    pruned = {**counts, "done": 3, "running": 0, "pruned": 1, "failed": 1, "succeeded": 1}
    assert describe_progress(sweep(pruned, {**best, "value": 0.25}, "val_loss")) == \
        "running 3/3 trials done, 1 pruned, 1 failed, best val_loss 0.250 (trial 1)"


def test_sweep_explain_dataset_maximize_and_the_management_commands(live, gazer, dataset_id, tmp_path):
    swept = gazer_cli(live, "sweep", "--dataset", dataset_id, "--output", "cli-swept", *TINY_FINE_TUNE,
                      "--space", '{"lr": {"log_uniform": [0.001, 0.01]}}', "--trials", "2", timeout=300)
    assert swept.returncode == 0 and "100%" in swept.stderr, swept.stdout + swept.stderr
    assert "/2 trials done" in swept.stderr, swept.stderr  # the bar counts the trials
    sweep_id = swept.stdout.split()[1]
    trials = gazer_cli(live, "jobs", "ls", "--parent", sweep_id)
    assert trials.stdout.count("fine-tune") == 2, trials.stdout
    versions = gazer_cli(live, "models", "versions", "cli-swept")
    assert versions.returncode == 0 and versions.stdout.splitlines()[1].split()[:2] == ["1", "efficientnet_lite0"]
    assert "succeeded: model cli-swept@1 (trial" in swept.stdout  # the model it published, named

    explained = gazer_cli(live, "explain-dataset", dataset_id, "--method", "cam", "--faithfulness", timeout=300)
    assert explained.returncode == 0, explained.stdout + explained.stderr
    written = gazer_cli(live, "jobs", "artifacts", explained.stdout.split()[1], "-o", str(tmp_path / "maps"))
    assert written.returncode == 0 and {path.suffix for path in (tmp_path / "maps").iterdir()} >= {".csv", ".zip"}

    maximized = gazer_cli(live, "maximize", "--class", "Flamingo", "--option", "steps=2", "--option", "size=64",
                          "--no-follow")  # by its label
    assert maximized.returncode == 0, maximized.stdout + maximized.stderr
    job_id = maximized.stdout.strip()  # the id alone, for a script
    assert gazer.wait(job_id, timeout=120).state == "succeeded"
    assert gazer.job(job_id).params["target"]["classes"] == [130]
    gazer_cli(live, "jobs", "artifacts", job_id, "-o", str(tmp_path / "flamingo"))
    assert Image.open(tmp_path / "flamingo" / "target-0.png").size == (64, 64)

    for _ in range(2):
        gazer.upload_model("cli-tiny", onnx=onnx_classifier().SerializeToString(), input_size=32)
    assert gazer_cli(live, "models", "pin", "cli-tiny", "1").stdout.strip() == "cli-tiny means cli-tiny@1 from now on"
    assert gazer_cli(live, "models", "delete", "cli-tiny@2").returncode == 0
    assert [version.version for version in gazer.versions("cli-tiny").data] == [1]
    gazer.upload_model("cli-tiny", onnx=onnx_classifier().SerializeToString(), input_size=32)
    unasked = gazer_cli(live, "models", "delete", "cli-tiny")  # every version went at once, unasked
    assert unasked.returncode == 1 and "deletes every version of it (v1, v3): add --yes" in unasked.stderr, \
        unasked.stderr
    assert [version.version for version in gazer.versions("cli-tiny").data] == [1, 3]
    deleted = gazer_cli(live, "models", "delete", "cli-tiny", "--yes")
    assert deleted.stdout.strip() == "model cli-tiny deleted, every version", deleted.stdout + deleted.stderr
    assert "cli-tiny" not in [model.id for model in gazer.models().data]

    shown = gazer_cli(live, "datasets", "show", dataset_id)
    assert shown.returncode == 0 and f'"id": "{dataset_id}"' in shown.stdout
    spare = gazer_cli(live, "datasets", "upload", str(pet_folder(tmp_path)), "--quiet").stdout.strip()
    assert gazer_cli(live, "datasets", "delete", spare).stdout.strip() == f"dataset {spare} deleted"
    assert spare not in gazer_cli(live, "datasets", "ls").stdout


def test_explain_refuses_an_overlay_and_a_heatmap_written_to_the_same_place(photos, tmp_path):
    """-o and --heatmap naming one file, or one folder, wrote the heatmap over the overlay, said `-> same.png`
    of a file that held the heatmap, and exited 0."""
    images = [str(photos["chelsea"]), str(photos["coffee"])]
    with FakeService({}) as service:
        runs = {"same.png": gazer_at(service, "explain", images[0], "-o", "same.png", "--heatmap", "same.png",
                                     cwd=tmp_path),
                "one/chelsea.png": gazer_at(service, "explain", images[0], "-o", "one/", "--heatmap", "one/",
                                            cwd=tmp_path),
                "both/chelsea.png": gazer_at(service, "explain", *images, "-o", "both", "--heatmap", "both",
                                             cwd=tmp_path),
                str(tmp_path / "x.png"): gazer_at(service, "explain", images[0], "-o", str(tmp_path / "x.png"),
                                                  "--heatmap", "x.png", "--target", "tabby", cwd=tmp_path)}
    for written, run in runs.items():
        assert run.returncode == 1 and run.stderr.strip() == \
            f"gazer: -o and --heatmap would both write {written}; give them different names or folders", run.stderr
    assert service.received == [] and not list(tmp_path.iterdir())  # refused before the label was looked up


def test_explain_refuses_to_write_both_pictures_to_standard_output(photos, tmp_path):
    """`-o - --heatmap -` wrote the overlay and the heatmap to standard output, one PNG after the other, and
    exited 0."""
    with FakeService({}) as service:
        run = gazer_at(service, "explain", str(photos["chelsea"]), "-o", "-", "--heatmap", "-", cwd=tmp_path)
    assert run.returncode == 1 and run.stdout == "" and run.stderr.strip() == \
        "gazer: -o - and --heatmap - both name standard output, which takes one picture; write one of them to a file"
    assert service.received == [] and not list(tmp_path.iterdir())


def test_models_delete_takes_the_end_of_the_input_at_its_question_as_no():
    """Ctrl-D at the `[y/N]` question (the input ended) fell over with an EOFError traceback."""
    one_version = {"version": 1, "architecture": "resnet18", "description": "", "default": True, "state": "ready"}
    terminal, its_end = pty.openpty()
    with FakeService({"/v1/models/m/versions": json_answer({"data": [one_version], "count": 1, "default": 1,
                                                            "pinned": None})}) as service:
        asking = subprocess.Popen([sys.executable, "-m", "gazer", "--url", service.url, "models", "delete", "m"],
                                  stdin=its_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        os.close(its_end)
        os.write(terminal, b"\x04")  # Ctrl-D, on a line of its own: the end of the input
        out, err = asking.communicate(timeout=60)
    os.close(terminal)
    assert asking.returncode == 1 and out == "nothing deleted\n" and "Traceback" not in err, err
    assert "[y/N]" in err and [method for method, _, _ in service.received] == ["GET"]  # no DELETE


def test_explain_dataset_takes_a_batch_size():
    """explain-dataset had no --batch-size, and `--option batch_size=4` went into the method's options,
    which the service refused."""
    with FakeService({"/v1/jobs/explain-dataset": json_answer(job("j1"), 202)}) as service:
        done = gazer_at(service, "explain-dataset", "d1", "--batch-size", "4", "--option", "steps=2", "--no-follow")
    assert done.returncode == 0 and done.stdout.strip() == "j1", done.stderr
    [(_, _, body)] = service.received
    assert json.loads(body) == {"dataset_id": "d1", "model": "efficientnet_lite0", "faithfulness": False,
                                "batch_size": 4, "options": {"steps": 2}}


def test_compare_writes_its_grid_into_a_folder_as_explain_does(live, photos, tmp_path):
    """`-o new/` wrote a file named `new`, and `-o` an existing folder ran every method, then failed with
    `Is a directory`."""
    (tmp_path / "existing").mkdir()
    for given, written in ((f"{tmp_path}/new/", tmp_path / "new" / "chelsea.png"),
                           (str(tmp_path / "existing"), tmp_path / "existing" / "chelsea.png")):
        done = gazer_cli(live, "compare", str(photos["chelsea"]), "--methods", "cam", "-o", given)
        assert done.returncode == 0 and f"-> {written}" in done.stdout, done.stderr
        assert Image.open(written).format == "PNG"


def test_an_empty_job_id_or_model_name_is_refused_before_any_request():
    """`gazer jobs show ""` asked for /v1/jobs/, which the service redirects to the list of jobs, and said
    `307 Temporary Redirect: ... give the service's own address`."""
    with FakeService({}) as service:
        job_shown, model_shown = gazer_at(service, "jobs", "show", ""), gazer_at(service, "models", "show", "")
    assert job_shown.returncode == 1 and job_shown.stderr == "gazer: the job's id is empty\n", job_shown.stderr
    assert model_shown.returncode == 1 and model_shown.stderr == "gazer: the model's name is empty\n", \
        model_shown.stderr
    assert service.received == []


def test_version_prints_the_installed_version():
    """`gazer --version` was refused: `the following arguments are required: COMMAND`."""
    shown = subprocess.run([sys.executable, "-m", "gazer", "--version"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout == f"gazer {importlib.metadata.version('gazer')}\n", shown.stderr


def test_following_a_job_that_is_not_there_draws_no_progress_bar():
    """`gazer jobs follow nope` drew a 0% progress bar before saying that there is no such job."""
    with FakeService({}) as service:
        done = gazer_at(service, "jobs", "follow", "nope")
    assert done.returncode == 1 and done.stderr == "gazer: 404 Not Found: no /v1/jobs/nope/events\n", done.stderr
