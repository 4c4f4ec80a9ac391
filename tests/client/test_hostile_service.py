"""The `gazer` command against a service that misbehaves: a real HTTP server (fake_service) answers
what a malicious or broken one would, and the CLI must neither write where it was not asked, nor
hand the terminal what the server sent, nor fall over with a traceback."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from PIL import Image

from gazer import BadAnswer, Client, GazerError, NoAnswer
from gazer import client as gazer_client
from gazer.calls import RECONNECT_PAUSE_SECONDS
from gazer.client import AsyncClient
from gazer.grid import MAX_TILE_HEIGHT, TILE_WIDTH, Tile, grid
from support import chelsea, encode
from tests.client.fake_service import (ROOT, Answer, FakeService, events, gazer_at, job, json_answer, model,
                                       problem)


def artifacts_service(names: list[str], contents: dict[str, bytes] | None = None) -> FakeService:
    """A finished job j1 listing `names`, each answering `contents[name]`, else `name`'s own bytes."""
    listed = [{"name": name, "url": f"/v1/jobs/j1/artifacts/{name}", "bytes": 1} for name in names]
    answers = {"/v1/jobs/j1": json_answer(job("j1")),
               "/v1/jobs/j1/artifacts": json_answer({"data": listed, "count": len(listed)})}
    answers.update({f"/v1/jobs/j1/artifacts/{name}": Answer(200, (contents or {}).get(name, name.encode()))
                    for name in names})
    return FakeService(answers)


def test_artifacts_go_to_a_new_folder_and_names_that_are_not_plain_file_names_are_refused(tmp_path):
    (tmp_path / ".bashrc").write_text("mine")
    hostile = [".bashrc", "../.profile", "a/x", "b\\x", "x\x00y", "C:evil", "..", "", "ok.png"]
    with artifacts_service(hostile) as service:
        done = gazer_at(service, "jobs", "artifacts", "j1", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert (tmp_path / ".bashrc").read_text() == "mine" and not (tmp_path / ".profile").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == [".bashrc", "j1"]
    written = tmp_path / "j1"
    assert [path.name for path in written.iterdir()] == ["ok.png"] and (written / "ok.png").read_bytes() == b"ok.png"
    assert done.stdout.splitlines() == [str(Path("j1") / "ok.png")]
    refused = [line for line in done.stderr.splitlines() if "not a plain file name" in line]
    assert len(refused) == len(hostile) - 1, done.stderr


def test_artifacts_never_replace_a_file_or_follow_a_link_unless_forced(tmp_path):
    victim, folder = tmp_path / "victim", tmp_path / "out"
    victim.write_text("precious")
    folder.mkdir()
    (folder / "ok.png").symlink_to(victim)
    with artifacts_service(["ok.png"]) as service:
        refused = gazer_at(service, "jobs", "artifacts", "j1", "-o", str(folder))
        assert refused.returncode == 1 and "exists" in refused.stderr and "--force" in refused.stderr, refused.stderr
        assert victim.read_text() == "precious" and (folder / "ok.png").is_symlink()
        forced = gazer_at(service, "jobs", "artifacts", "j1", "-o", str(folder), "--force")
    assert forced.returncode == 0, forced.stderr
    assert victim.read_text() == "precious"  # the link was replaced, not written through
    assert not (folder / "ok.png").is_symlink() and (folder / "ok.png").read_bytes() == b"ok.png"
    assert [path.name for path in folder.iterdir()] == ["ok.png"]  # no temporary file left


def test_a_name_listed_twice_is_an_error_before_anything_is_written(tmp_path):
    with artifacts_service(["x.png", "y.png", "x.png"]) as service:
        done = gazer_at(service, "jobs", "artifacts", "j1", "-o", str(tmp_path / "out"))
    assert done.returncode == 1 and "'x.png' twice" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f"  # retitle the window, clear the screen, C1 CSI, DEL


def control_characters(text: str) -> set[str]:
    """The C0 (but a line break), DEL and C1 characters in `text`."""
    return {char for char in text if char != "\n" and (ord(char) < 0x20 or 0x7f <= ord(char) < 0xa0)}


def test_what_the_server_says_reaches_the_terminal_with_its_control_characters_written_out():
    detail = model("m" + ESCAPES, labels=["cat" + ESCAPES, "cat2"], default_layer="layer4", layers=["layer4"],
                   methods=["gradcam"], layer_methods=["gradcam"], default_method="gradcam", attention=[],
                   weights_digest="d", status="ready",
                   preprocessing={"resize_short_side_to": 256, "center_crop": 224, "interpolation": "bilinear",
                                  "mean": [0.5] * 3, "std": [0.5] * 3}, description="a\nfake line" + ESCAPES)
    running = job("j1", "running", progress={"fraction": 0.5, "phase": "phase" + ESCAPES})
    ended = job("j1", "failed", error={"detail": "failed" + ESCAPES})
    with FakeService({"/v1/models": json_answer({"data": [detail], "count": 1}),
                      "/v1/models/m": json_answer(detail),
                      "/v1/models/bad": problem(422, type="about:blank", title="Unprocessable" + ESCAPES, status=422,
                                                detail="refused" + ESCAPES,
                                                errors=[{"field": "f" + ESCAPES, "message": "m" + ESCAPES}],
                                                valid=["v" + ESCAPES]),
                      "/v1/jobs/j1": json_answer(ended),
                      "/v1/jobs/j1/events": events(f"event: progress\ndata: {json.dumps(running)}",
                                                   f"event: end\ndata: {json.dumps(ended)}")}) as service:
        runs = {"ls": gazer_at(service, "models", "ls"), "labels": gazer_at(service, "models", "labels", "m"),
                "show": gazer_at(service, "models", "show", "m"), "problem": gazer_at(service, "models", "show", "bad"),
                "refusal": gazer_at(service, "explain", "x.jpg", "-m", "m", "--target", "cat", "-o", "x.png"),
                "follow": gazer_at(service, "jobs", "follow", "j1"), "json": gazer_at(service, "jobs", "show", "j1")}
    for name, run in runs.items():
        assert not control_characters(run.stdout + run.stderr.replace("\r", "")), (name, run.stdout, run.stderr)
        assert "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x7f" in run.stdout + run.stderr or name == "json", (name, run)
    assert runs["show"].stdout.splitlines()[1] == "  a\\x0afake line" + r"\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f"
    assert all(runs[name].returncode == 1 for name in ("problem", "refusal", "follow")), runs
    assert json.loads(runs["json"].stdout)["error"]["detail"] == "failed" + ESCAPES  # still the JSON it was


MiB = 2**20
# `python -m gazer` that says, last, the most memory it held: VmHWM (ru_maxrss would count the test's own
# process too, which it was forked from)
MEASURED = ("import atexit, re, runpy, sys; atexit.register(lambda: print(re.search(r'VmHWM:.*', "
            "open('/proc/self/status').read()).group(), file=sys.stderr)); sys.argv[0] = 'gazer'; "
            "runpy.run_module('gazer', run_name='__main__')")


def peak_bytes(run: subprocess.CompletedProcess) -> int:
    return 1024 * int(run.stderr.split()[-2])  # VmHWM: N kB


def megabytes(count: int, content: bytes = b"\0") -> Callable[[], Iterator[bytes]]:
    return lambda: (content * MiB for _ in range(count))


def test_an_artifact_is_streamed_to_its_file_not_held_in_memory(tmp_path):
    size = 256
    service = artifacts_service(["big.bin"])
    service.answers["/v1/jobs/j1/artifacts/big.bin"] = Answer(200, megabytes(size), {"Content-Length": str(size * MiB)})
    with service:
        done = subprocess.run([sys.executable, "-c", MEASURED, "--url", service.url, "jobs", "artifacts", "j1", "-o",
                               str(tmp_path)], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                              text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "big.bin").stat().st_size == size * MiB
    assert peak_bytes(done) < 128 * MiB, peak_bytes(done)  # the CLI alone is about 60 MiB


def test_a_json_answer_over_64_mib_is_refused_by_its_length_or_as_it_comes():
    declared = Answer(200, megabytes(100, b" "), {"Content-Type": "application/json", "Content-Length": str(100 * MiB)})
    endless = Answer(200, megabytes(100, b" "), {"Content-Type": "application/json"})  # no length: until it closes
    for answer in (declared, endless):
        with FakeService({"/v1/models": answer}) as service:
            done = gazer_at(service, "models", "ls")
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip().startswith(f"gazer: unexpected answer from {service.url}: the answer to GET "
                                              f"/v1/models "), done.stderr
        assert "at most 64 MiB" in done.stderr and len(done.stderr.splitlines()) == 1


def test_an_event_line_over_16_mi_characters_is_refused():
    line = Answer(200, lambda: iter([b"event: progress\ndata: ", *megabytes(20, b"x")(), b"\n\n"]),
                  {"Content-Type": "text/event-stream"})
    with FakeService({"/v1/jobs/j1/events": line}) as service:
        done = gazer_at(service, "jobs", "follow", "j1")
    assert done.returncode == 1 and "over 16 Mi characters" in done.stderr, done.stderr


def test_a_service_that_is_down_is_one_line_of_error_not_a_traceback():
    down = FakeService({})  # its port, with nothing listening on it
    down.server.server_close()
    done = gazer_at(down, "models", "ls")
    assert done.returncode == 1 and done.stderr.startswith(f"gazer: cannot reach {down.url}: "), done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_a_malformed_or_unexpected_answer_is_one_line_of_error_not_a_traceback():
    fine_tune = job("j1", type="fine-tune", result={"model": "not an object"})
    answers = {"/v1/models": Answer(302, b"", {"Location": "https://elsewhere.example/v1/models"}),
               "/v1/models/typed": problem(500, status="five hundred", detail="boom"),
               "/v1/models/listed": problem(422, title="Unprocessable Entity", status=422, detail="refused",
                                            errors="abc", valid=5),
               "/v1/jobs": json_answer({"data": [{"id": "j1"}], "count": 1}),
               "/v1/jobs/j1/events": events("event: progress\ndata: {not json"),
               "/v1/jobs/j2/events": events(f"event: end\ndata: {json.dumps(fine_tune)}")}
    with FakeService(answers) as service:
        runs = {"redirect": gazer_at(service, "models", "ls"), "typed": gazer_at(service, "models", "show", "typed"),
                "listed": gazer_at(service, "models", "show", "listed"), "record": gazer_at(service, "jobs", "ls"),
                "event": gazer_at(service, "jobs", "follow", "j1"), "end": gazer_at(service, "jobs", "follow", "j2")}
    for name, run in runs.items():
        assert run.returncode == 1 and "Traceback" not in run.stderr, (name, run.stderr)
    said = {name: [line for line in run.stderr.replace("\r", "\n").splitlines() if line and not line.startswith("job ")]
            for name, run in runs.items()}  # without the progress bar
    assert said["redirect"] == ["gazer: 302 Found: a redirect to 'https://elsewhere.example/v1/models', which this "
                                "client does not follow: give the service's own address"]
    assert said["typed"] == ['gazer: 500 Internal Server Error: {"status": "five hundred", "detail": "boom"}']
    assert said["listed"] == ["gazer: 422 Unprocessable Entity: refused", "  abc", "  valid: 5"]
    unexpected = f"gazer: unexpected answer from {service.url}: "
    assert said["record"] == [unexpected + "the answer to GET /v1/jobs is not a JobList: data.0.type: Field required "
                                           "(and 10 more)"]
    assert said["event"] == [unexpected + "an event of the job's event stream is not a JSON object: '{not json'"]
    assert len(said["end"]) == 1 and said["end"][0].startswith(unexpected + "TypeError: "), said["end"]


def test_the_python_client_raises_its_own_errors_for_answers_it_cannot_read(tmp_path):
    """A page or record that is not the API's raised pydantic's ValidationError, and an event stream
    closed before its job's end ended `events()` as if the job had."""
    answers = {"/v1/models": Answer(200, b"<html>a proxy's page</html>", {"Content-Type": "text/html"}),
               "/v1/datasets": json_answer({"data": "x"}),
               "/v1/jobs/j1/events": events(f"event: progress\ndata: {json.dumps(job('j1'))}"),
               "/v1/jobs/j1": json_answer(job("j1"))}
    with FakeService(answers) as service, Client(service.url) as client:
        with pytest.raises(BadAnswer, match="the answer to GET /v1/models is not a ModelList"):
            client.models()
        with pytest.raises(GazerError, match="the answer to GET /v1/datasets is not a DatasetList: data"):
            client.datasets()
        seen = []
        with pytest.raises(BadAnswer, match="the event stream of job j1 ended before the job did"):
            for event in client.events("j1"):
                seen.append(event.kind)
        assert seen == ["progress"]

        async def follow() -> list[str]:
            async with AsyncClient(service.url) as awaiting:
                return [event.kind async for event in awaiting.events("j1")]
        with pytest.raises(BadAnswer, match="ended before the job did"):
            asyncio.run(follow())
        follows = gazer_at(service, "jobs", "follow", "j1")
    assert follows.returncode == 1 and "ended before the job did; see: gazer jobs show j1" in follows.stderr


def test_an_answer_in_stacked_codings_is_refused_before_it_is_decoded():
    """httpx undid each coding of `gzip, gzip` on every chunk before the 64 MiB count saw it: 1.8 KB
    of answer held 2 GB. One coding is still read (and counted as it is decoded)."""
    inner = zlib.compressobj(9, wbits=31)
    layer = inner.compress(b" " * (256 * MiB)) + inner.flush()
    outer = zlib.compressobj(9, wbits=31)
    stacked = Answer(200, outer.compress(layer) + outer.flush(),
                     {"Content-Type": "application/json", "Content-Encoding": "gzip, gzip"})
    with FakeService({"/v1/models": stacked}) as service:
        done = subprocess.run([sys.executable, "-c", MEASURED, "--url", service.url, "models", "ls"],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
        with Client(service.url) as client, pytest.raises(BadAnswer, match=r"in 2 content codings \(gzip, gzip\)"):
            client.models()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"gazer: unexpected answer from {service.url}: the answer to GET /v1/models is in "
                                  f"2 content codings (gzip, gzip); this client reads one at most"), done.stderr
    assert peak_bytes(done) < 128 * MiB, peak_bytes(done)
    one = Answer(200, gzip.compress(json.dumps({"data": [], "count": 0}).encode()),
                 {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    with FakeService({"/v1/models": one}) as service, Client(service.url) as client:
        assert client.models().data == []


def explain_answer(results: int = 1, overlay: str | None = None) -> Answer:
    overlay = overlay if overlay is not None else base64.b64encode(b"\x89PNG").decode()
    top = {"index": 1, "label": "cat", "probability": 0.9}
    result = {"predictions": [top], "explanation": {
        "method": "cam", "target": top, "layer": "head", "heatmap_png": None, "overlay": overlay,
        "overlay_format": "png", "timings_ms": {}}}
    return json_answer({"model": {"id": "m", "version": 1}, "results": [result] * results})


def test_an_explain_answer_without_the_images_results_or_with_a_picture_not_in_base64_is_one_line_of_error(tmp_path):
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(encode(chelsea()))
    for answer, said in ((explain_answer(results=0), "has 0 results for the 1 images sent"),
                         (explain_answer(results=2), "has 2 results for the 1 images sent"),
                         (explain_answer(overlay="not*base64!"), "overlay: Value error, not base64")):
        with FakeService({"/v1/models/m/explain": answer}) as service:
            done = gazer_at(service, "explain", str(photo), "--model", "m", "-o", str(tmp_path / "o.png"))
            with Client(service.url) as client, pytest.raises(BadAnswer, match=re.escape(said)):
                client.explain(photo, "m")
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith(f"gazer: unexpected answer from {service.url}: ") and said in done.stderr, \
            done.stderr
        assert not (tmp_path / "o.png").exists()


def test_the_job_follower_connects_again_at_most_once_a_second_however_soon_streams_expire():
    """A stream that expires as it opens was connected to again at once: 2,600 requests in 5 s."""
    expiring = events(f"event: progress\ndata: {json.dumps(job('j1', state='running'))}",
                      'event: expired\ndata: {"type": "/problems/stream-expired", "detail": "expired"}')
    with FakeService({"/v1/jobs/j1/events": expiring}) as service, Client(service.url) as client:
        started = time.monotonic()
        seen = list(itertools.islice(client.events("j1"), 4))
        took = time.monotonic() - started
    assert [event.kind for event in seen] == ["progress"] * 4
    assert took >= 3 * RECONNECT_PAUSE_SECONDS * 0.9, took


def test_a_silent_event_stream_is_no_answer_not_a_wait_for_ever(monkeypatch):
    """The service says something at least every 17 s; a stream silent for longer (a half-open
    connection) hung `jobs follow` for good. Here the limit is 1 s instead of 60."""
    def silent() -> Iterator[bytes]:
        yield f"event: progress\ndata: {json.dumps(job('j1', state='running'))}\n\n".encode()
        time.sleep(5)
    assert gazer_client.STREAM_TIMEOUT.read is not None and 17 < gazer_client.STREAM_TIMEOUT.read <= 120
    monkeypatch.setattr(gazer_client, "STREAM_TIMEOUT", httpx.Timeout(1.0, connect=10.0))
    with FakeService({"/v1/jobs/j1/events": Answer(200, silent, {"Content-Type": "text/event-stream"})}) as service, \
            Client(service.url) as client:
        seen, started = [], time.monotonic()
        with pytest.raises(NoAnswer, match="did not answer in time"):
            for event in client.events("j1"):
                seen.append(event.kind)
    assert seen == ["progress"] and time.monotonic() - started < 4


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    encoded = io.BytesIO()
    Image.new(mode, (width, height)).save(encoded, "PNG")
    return encoded.getvalue()


def test_compare_fits_each_overlay_in_its_tile_and_refuses_what_is_not_a_drawable_image():
    """A 1 x 2,000 overlay (84 bytes) was scaled to 320 x 640,000: 1.6 GB held, and 61 GB at 1 x 200,000."""
    tall = grid([Tile(png(1, 2_000), "tall"), Tile(png(640, 480), "photo")])
    assert tall.size == (2 * TILE_WIDTH, MAX_TILE_HEIGHT + 28)
    for refused, said in ((png(9_000, 9_000, "1"), "is 9000 x 9000 pixels; this client draws at most 80,000,000"),
                          (png(20_000, 15_000, "1"), "could be decompression bomb"),
                          (b"not an image", "not an image this client can draw")):
        with pytest.raises(BadAnswer, match=said):
            grid([Tile(refused, "x")])


def test_local_file_errors_say_which_file_and_what_is_wrong_not_an_errno(tmp_path):
    """`[Errno 17] File exists: 'j1/report.json'` and `[Errno 2] No such file or directory: 'nosuchdir'`."""
    (tmp_path / "report.json").write_text("mine")
    with artifacts_service(["a.txt"]) as service:
        into_a_file = gazer_at(service, "jobs", "artifacts", "j1", "-o", str(tmp_path / "report.json"))
        missing = gazer_at(service, "datasets", "upload", "nosuchdir", cwd=tmp_path)
    assert into_a_file.returncode == 1 and into_a_file.stderr.strip() == \
        f"gazer: {tmp_path / 'report.json'} is a file: --output names the folder the job's files go in"
    assert missing.returncode == 1 and missing.stderr.strip() == "gazer: nosuchdir: No such file or directory"
    assert (tmp_path / "report.json").read_text() == "mine"
