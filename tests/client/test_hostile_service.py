"""The `gazer` command against a service that misbehaves: a real HTTP server (fake_service) answers
what a malicious or broken one would, and the CLI must neither write where it was not asked, nor
hand the terminal what the server sent, nor fall over with a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from gazer import BadAnswer, Client, GazerError
from gazer.client import AsyncClient
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
