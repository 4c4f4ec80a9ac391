"""`gazer.client` against the live service: typed results, decoded explanations, the one
error type, the async client and job artifacts."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import httpx

from gazer import BadAnswer, Client, EmptyName, GazerError, NoAnswer
from gazer.calls import EventParser
from gazer.client import ApiError, AsyncClient, UnknownClass
from gazer.results import ExplainResponse, JobEvent
from schemas.models import PredictResponse
from support import chelsea, encode, shapes_archive
from tests.api.test_model_refusals import onnx_classifier
from tests.client.conftest import EVENT_STREAM_SECONDS
from tests.client.fake_service import ROOT, Answer, FakeService, job, json_answer
from tests.live_service import free_port

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_predict_returns_typed_results_with_a_cat_on_top(gazer, photos):
    answer = gazer.predict([photos["chelsea"], photos["coffee"]], top_k=3)
    assert isinstance(answer, PredictResponse)
    assert answer.model.id == "efficientnet_lite0"
    cat, cup = answer.results
    assert len(cat.predictions) == 3 and cat.predictions[0].index in CAT_CLASSES, cat
    assert cup.predictions[0].index not in CAT_CLASSES
    for image in (chelsea(), chelsea().convert("CMYK")):  # a PIL image, sent as PNG (CMYK as RGB)
        from_pil = gazer.predict(image, top_k=3).results[0]
        assert from_pil.predictions[0].index in CAT_CLASSES, image.mode


def test_explain_decodes_the_pictures_and_the_map(gazer, photos):
    answer = gazer.explain(photos["chelsea"], method="gradcam", outputs=["heatmap", "overlay", "map"],
                           overlay_format="png")
    assert isinstance(answer, ExplainResponse)
    explanation = answer.results[0].explanation
    heatmap = Image.open(io.BytesIO(explanation.heatmap))
    assert explanation.heatmap_image == explanation.heatmap  # named as overlay_image is
    overlay = Image.open(io.BytesIO(explanation.overlay_image))
    assert heatmap.format == overlay.format == "PNG" and explanation.overlay_format == "png"
    assert heatmap.size == overlay.size == chelsea().size and heatmap.mode == "L"
    raw = explanation.map_array
    side = gazer.model("efficientnet_lite0").input_size // 32  # EfficientNet's last feature map
    assert isinstance(raw, np.ndarray) and raw.shape == (side, side)
    assert raw.min() >= 0 and raw.max() <= 1 and raw.max() > 0


def test_a_target_may_be_a_class_label_as_on_the_command_line(gazer, live, photos):
    by_label = gazer.explain([photos["chelsea"]] * 2, method="gradcam", target=["Egyptian cat", "tiger"],
                             outputs="map")
    assert [result.explanation.target.index for result in by_label.results] == [285, 292]
    by_index = gazer.explain(photos["chelsea"], method="gradcam", target=285, outputs="map")
    assert by_index.results[0].explanation.map == by_label.results[0].explanation.map
    generated = gazer.explain([photos["chelsea"]] * 2, method="cam", target=(n for n in (285, "tiger")), outputs="map")
    assert [result.explanation.target.index for result in generated.results] == [285, 292]  # it was left out
    with pytest.raises(TypeError, match="target: a class index or label"):
        gazer.explain(photos["chelsea"], target=3.0)
    assert gazer.class_index("efficientnet_lite0", "TABBY") == 281 and gazer.class_index("efficientnet_lite0", 7) == 7
    with pytest.raises(UnknownClass, match="classes of efficientnet_lite0 hold 'cat'") as several:
        gazer.explain(photos["chelsea"], target="cat")
    assert {281, 285} <= set(several.value.candidates)
    with pytest.raises(UnknownClass, match="no class of efficientnet_lite0 is named 'zebu'"):
        gazer.class_index("efficientnet_lite0", "zebu")

    async def from_async() -> tuple[int, int]:
        async with AsyncClient(live.url) as client:
            answer = await client.explain(photos["chelsea"], method="gradcam", target="tiger cat", outputs="map")
            return answer.results[0].explanation.target.index, await client.class_index("efficientnet_lite0", "tabby")
    assert asyncio.run(from_async()) == (282, 281)


def test_the_readmes_python_example_runs_as_written(live, photos, tmp_path, monkeypatch):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = re.search(r"```python\n(from gazer import Client\n.*?)```", readme, re.S).group(1)
    (tmp_path / "cat.jpg").write_bytes(photos["chelsea"].read_bytes())
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(example.replace("http://127.0.0.1:8000", live.url), {})
    assert printed.getvalue().split("\n")[:2] == ["tiger cat", "(7, 7)"]
    assert Image.open(tmp_path / "overlay.jpg").format == "JPEG"


def test_a_bad_file_is_one_error_type_with_the_problem_fields(gazer, photos):
    with pytest.raises(ApiError) as raised:
        gazer.predict(("notes.jpg", b"this is not an image"))
    error = raised.value
    assert (error.status, error.title) == (422, "Unprocessable content")
    assert error.type == "/problems/invalid-image" and "not an image" in error.detail
    assert error.extras == {"errors": [{"field": "file.0", "message": error.detail, "status": 422}]}  # which file

    with pytest.raises(ApiError) as raised:  # the extras come along
        gazer.explain(photos["chelsea"], method="no-such-method")
    assert raised.value.status == 422 and raised.value.type == "/problems/unknown-method"
    assert raised.value.extras["errors"] == [{"field": "method", "message": "unknown method 'no-such-method'"}]
    assert "gradcam" in raised.value.extras["valid"]

    with pytest.raises(ApiError) as raised:  # asked for no pictures: told so, not sent the default two
        gazer.explain(photos["chelsea"], outputs=[])
    assert raised.value.status == 422 and "names nothing" in raised.value.detail

    with pytest.raises(ApiError) as raised:
        gazer.model("no-such-model")
    assert raised.value.status == 404 and raised.value.problem()["type"] == "/problems/unknown-model"


def test_no_answer_is_a_gazer_error_with_httpxs_as_its_cause(photos):
    """The service down (nothing listens on the port), or an answer cut short (a streamed artifact
    shorter than its Content-Length): NoAnswer, as the CLI's one line says, not httpx's own error."""
    down = f"http://127.0.0.1:{free_port()}"
    with Client(down) as gazer, pytest.raises(NoAnswer) as raised:
        gazer.explain(photos["chelsea"])
    assert isinstance(raised.value, GazerError) and not isinstance(raised.value, ApiError)
    assert isinstance(raised.value.__cause__, httpx.ConnectError) and not raised.value.timed_out
    assert str(raised.value).startswith(f"cannot reach {down}: ") and raised.value.url == down

    async def explain_async() -> None:
        async with AsyncClient(down) as client:
            await client.explain(photos["chelsea"])

    with pytest.raises(NoAnswer) as raised:
        asyncio.run(explain_async())
    assert isinstance(raised.value.__cause__, httpx.ConnectError)

    cut_short = Answer(200, b"0123456789", {"Content-Length": "100"})
    with FakeService({"/v1/jobs/j1/artifacts/big.bin": cut_short}) as service, Client(service.url) as gazer, \
            pytest.raises(NoAnswer) as raised:
        gazer.write_artifact("j1", "big.bin", io.BytesIO())
    assert isinstance(raised.value.__cause__, httpx.RemoteProtocolError), raised.value.__cause__


def test_numpy_numbers_and_one_output_named_as_a_string_are_sent_as_meant(gazer):
    probabilities = np.array([0.1, 0.9])
    answer = gazer.explain(encode(chelsea()), method="cam", target=np.int64(281) + np.argmax(probabilities) - 1,
                           top_k=np.int64(2), outputs="map")
    explanation = answer.results[0].explanation
    assert explanation.target.index == 281 and len(answer.results[0].predictions) == 2
    assert explanation.map_array is not None and explanation.heatmap is None and explanation.overlay_image is None
    from gazer import Client  # the package names its client
    assert Client is type(gazer)


def test_a_tuple_of_paths_is_several_images_and_a_name_with_bytes_is_one(gazer, photos):
    """A tuple of two paths was sent as one image named after the first, holding the second's path."""
    paths = (photos["chelsea"], photos["coffee"])
    assert len(gazer.predict(paths).results) == 2
    named = gazer.predict(("cat.jpg", Path(photos["chelsea"]).read_bytes()))
    assert len(named.results) == 1 and named.results[0].predictions[0].index in CAT_CLASSES


def test_following_a_job_outlasts_the_servers_event_streams(gazer):
    """Each stream ends with `event: expired` after EVENT_STREAM_SECONDS; events() connects again
    until the job's `end`, as `gazer jobs follow` and the fine-tune commands do."""
    job = gazer.activation_maximization({"class": 130}, steps=10000, size=64)
    started, cancelled = time.monotonic(), False
    try:
        for event in gazer.events(job.id):
            if event.kind == "end":
                break
            if time.monotonic() - started > 2.5 * EVENT_STREAM_SECONDS and not cancelled:
                gazer.cancel(job.id)  # past two streams' ends: now let it end
                cancelled = True
    finally:
        with contextlib.suppress(ApiError):
            gazer.cancel(job.id)
    assert cancelled and event.kind == "end" and event.job.state == "cancelled"


def test_an_event_streams_error_is_raised_as_the_problem_it_carries():
    parser = EventParser()
    for line in ("event: error", 'data: {"type": "/problems/queue-unavailable", "title": "Service Unavailable", '
                                 '"status": 503, "detail": "the job store cannot be read now"}'):
        assert parser.feed(line) is None
    with pytest.raises(ApiError) as raised:
        parser.feed("")
    assert raised.value.status == 503 and raised.value.type == "/problems/queue-unavailable"


def test_the_event_stream_is_split_into_lines_however_its_text_comes():
    record = json.dumps({"id": "j", "type": "fine-tune", "state": "running", "progress": None, "result": None,
                         "error": None, "params": {}, "attempts": 1, "cancel_requested": False, "created_at": 0.0,
                         "started_at": None, "finished_at": None})
    stream = f": hello\r\nevent: progress\r\ndata: {record}\r\n\r\nevent: end\rdata: {record}\n\n"
    for size in (1, 2, 7, len(stream)):  # a \r\n split between two chunks is one line break
        parser = EventParser()
        chunks = [stream[start:start + size] for start in range(0, len(stream), size)]
        found = [event.kind for chunk in chunks for event in parser.feed_text(chunk)]
        assert found == ["progress", "end"], size


def test_async_client_predicts_follows_a_job_and_fetches_its_artifacts(live):
    async def run() -> tuple[PredictResponse, list[JobEvent], list[str], bytes]:
        async with AsyncClient(live.url) as gazer:
            answers = await asyncio.gather(gazer.predict(encode(chelsea())), gazer.predict(encode(chelsea())))
            job = await gazer.activation_maximization({"class": 130}, steps=3, size=64)
            events = [event async for event in gazer.events(job.id)]
            assert (await gazer.wait(job.id, timeout=5)).state == "succeeded"
            names = await gazer.artifacts(job.id)
            return answers[0], events, names, await gazer.artifact(job.id, names[0])

    answer, events, names, png = asyncio.run(run())
    assert isinstance(answer, PredictResponse) and answer.results[0].predictions[0].index in CAT_CLASSES
    assert [event.kind for event in events][-1] == "end" and events[-1].job.state == "succeeded"
    assert all(event.kind == "progress" and not event.job.finished for event in events[:-1])
    assert names == ["target-0.png"]
    assert Image.open(io.BytesIO(png)).size == (64, 64)


def test_sweeps_data_set_explanations_pins_and_deletions_from_the_client(gazer, live):
    dataset = gazer.upload_dataset(shapes_archive(per_class=3), name="client-shapes")
    explained = gazer.explain_dataset(dataset.id, method="cam")
    base = {"dataset_id": dataset.id, "output_model": "client-swept", "epochs": 1, "batch_size": 4,
            "input_size": 32, "strategy": "feature_extraction"}
    sweep = gazer.sweep(base, {"lr": {"log_uniform": [1e-3, 1e-2]}}, trials=2)
    assert gazer.wait(explained.id, timeout=300).state == "succeeded"
    assert gazer.wait(sweep.id, timeout=300).state == "succeeded"

    async def trials_then_delete() -> list[str]:
        async with AsyncClient(live.url) as client:
            found = await client.jobs(parent=sweep.id)
            await client.delete_dataset(dataset.id)
            return [job.params["trial"]["sweep"] for job in found.data]

    assert asyncio.run(trials_then_delete()) == [sweep.id, sweep.id]
    assert dataset.id not in [item.id for item in gazer.datasets().data]

    tiny = onnx_classifier().SerializeToString()
    for _ in range(2):
        gazer.upload_model("client-tiny", onnx=tiny, input_size=32)
    assert gazer.pin("client-tiny", 1).version == 1 and gazer.model("client-tiny").version == 1
    assert gazer.unpin("client-tiny").version == 2 and gazer.model("client-tiny").version == 2
    assert gazer.pin("client-tiny", 1).version == 1
    gazer.delete_model("client-tiny@2")
    assert [version.version for version in gazer.versions("client-tiny").data] == [1]


def test_explain_dataset_sends_a_methods_options_given_as_keywords_in_options():
    """`explain_dataset(ds, method="integrated_gradients", steps=4)` sent steps beside the request's own
    fields, which the service refused (422: extra inputs are not permitted); only options={"steps": 4} worked."""
    with FakeService({"/v1/jobs/explain-dataset": json_answer(job("j1"), 202)}) as service:
        with Client(service.url) as client:
            client.explain_dataset("d1", method="integrated_gradients", steps=4, batch_size=2)
            client.explain_dataset("d1", options={"steps": 4, "baseline": "blur"}, baseline="black")

        async def submit() -> None:
            async with AsyncClient(service.url) as awaiting:
                await awaiting.explain_dataset("d1", "m", layer="head", steps=4)
        asyncio.run(submit())
    assert [json.loads(body) for _, _, body in service.received] == [
        {"dataset_id": "d1", "model": "efficientnet_lite0", "method": "integrated_gradients", "batch_size": 2,
         "options": {"steps": 4}},
        {"dataset_id": "d1", "model": "efficientnet_lite0", "options": {"steps": 4, "baseline": "black"}},
        {"dataset_id": "d1", "model": "m", "layer": "head", "options": {"steps": 4}}]


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_an_error_page_of_a_server_that_is_not_gazer_is_a_bad_answer(tmp_path):
    """The 404 page of a server that is not Gazer (`python -m http.server`) was a plain ApiError, and the
    CLI printed 500 characters of its HTML: `gazer: 404 File not found: <!DOCTYPE HTML>...`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    said = "the answer to GET /v1/models is 404 File not found, not JSON (text/html"
    try:
        with Client(url) as client, pytest.raises(BadAnswer, match=re.escape(said)) as raised:
            client.models()
        listed = subprocess.run([sys.executable, "-m", "gazer", "--url", url, "models", "ls"], capture_output=True,
                                text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        server.shutdown()
        server.server_close()
    assert raised.value.status == 404 and "<!DOCTYPE HTML>" in raised.value.detail
    assert listed.returncode == 1 and listed.stderr.startswith(f"gazer: unexpected answer from {url}: {said}"), \
        listed.stderr
    assert len(listed.stderr.splitlines()) == 1 and len(listed.stderr) < 300, listed.stderr


def test_an_empty_id_or_name_is_refused_before_any_request():
    """An empty job id asked for /v1/jobs/, which the service redirects to the list of jobs: a 307 that
    told the user to give the service's own address."""
    with FakeService({}) as service:
        with Client(service.url) as client:
            for call, said in ((partial(client.job, ""), "the job's id is empty"),
                               (partial(client.model, ""), "the model's name is empty"),
                               (partial(client.delete_dataset, ""), "the data set's id is empty")):
                with pytest.raises(EmptyName, match=said):
                    call()

        async def cancel() -> None:
            async with AsyncClient(service.url) as awaiting:
                await awaiting.cancel("")
        with pytest.raises(EmptyName, match="the job's id is empty"):
            asyncio.run(cancel())
    assert service.received == []


def test_a_class_index_the_model_has_no_class_of_is_an_unknown_class(gazer, live):
    """`class_index("efficientnet_lite0", 5000)` returned 5000, for a model of 1,000 classes."""
    with pytest.raises(UnknownClass, match="efficientnet_lite0 has no class 5000: its classes are 0 to 999"):
        gazer.class_index("efficientnet_lite0", 5000)
    assert gazer.class_index("efficientnet_lite0", "999") == 999

    async def from_async() -> int:
        async with AsyncClient(live.url) as client:
            return await client.class_index("efficientnet_lite0", 1000)
    with pytest.raises(UnknownClass, match="efficientnet_lite0 has no class 1000"):
        asyncio.run(from_async())
