"""Every API call as data: what to send and how to read the answer. `Client` and `AsyncClient`
only send a `Call` and hand the answer to its `read`, so the two never drift apart."""

from __future__ import annotations

import io
import json
import mimetypes
import numbers
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Generic, Iterable, Iterator, TypeVar
from urllib.parse import quote

import httpx
from PIL import Image
import pydantic
from pydantic import BaseModel

from gazer.errors import ApiError, BadAnswer, EmptyName, NoAnswer, refusal_by_model, shortened
from gazer.results import ExplainResponse, JobEvent
from schemas.datasets import Dataset, DatasetList
from schemas.jobs import ArtifactList, ExplainDatasetRequest, Job, JobList
from schemas.models import DEFAULT_MODEL, ModelDetail, ModelList, ModelRef, PredictResponse, VersionList

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# The most of an answer read into memory (JSON, an error's body). The largest the service sends is
# an explain answer with raw maps, under 40 MiB; artifacts are streamed to a file instead.
MAX_ANSWER_BYTES = 64 * 2**20
# The most of one line of a job's event stream, and of one event's data (a job record, at most about 1 MiB).
MAX_EVENT_CHARACTERS = 16 * 2**20
LINE_BREAK = re.compile(r"\r\n|\r|\n")

# An image to send: a path, the file's bytes, (file name, bytes), or a PIL image (sent as PNG).
ImageInput = str | os.PathLike[str] | bytes | tuple[str, bytes] | Image.Image
# A file to upload: a path, bytes, or an open binary file.
FileInput = str | os.PathLike[str] | bytes | IO[bytes]


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, Any] | None = None
    files: list[tuple[str, Any]] | None = None

    def request(self) -> dict[str, Any]:
        """Keyword arguments for httpx's `request` (and `stream`)."""
        sent: dict[str, Any] = {"method": self.method, "url": self.path}
        for name in ("params", "json", "data", "files"):
            value = getattr(self, name)
            if value is not None:
                sent[name] = value
        return sent


def checked(response: httpx.Response) -> httpx.Response:
    """`response` if it is a success (2xx); else its ApiError, a redirect's too (they are not followed)."""
    if not response.is_success:
        raise ApiError.from_response(response)
    return response


class AnswerLimit:
    """Counts what is read of a streamed answer: BadAnswer once its Content-Length, or what has come,
    is over MAX_ANSWER_BYTES."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.left = MAX_ANSWER_BYTES
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
            self.refuse(f"says it is {int(declared)} bytes")

    def take(self, chunk: bytes) -> bytes:
        self.left -= len(chunk)
        if self.left < 0:
            self.refuse("is larger")
        return chunk

    def refuse(self, why: str) -> None:
        request = self.response.request
        raise BadAnswer(f"the answer to {request.method} {request.url.path} {why}; this client reads at most "
                        f"{MAX_ANSWER_BYTES // 2**20} MiB of an answer", self.response.status_code)


def one_coding_at_most(response: httpx.Response) -> None:
    """BadAnswer for an answer in more than one content coding (`gzip, gzip`): httpx undoes each
    in turn on every chunk before AnswerLimit counts it, so a few KB of stacked gzip held gigabytes.
    Called on every answer as it comes (httpx's response hook), before its body is read."""
    codings = [coding for value in response.headers.get_list("Content-Encoding")
               for coding in value.split(",") if coding.strip().lower() not in ("", "identity")]
    if len(codings) > 1:
        request = response.request
        raise BadAnswer(f"the answer to {request.method} {request.url.path} is in {len(codings)} content codings "
                        f"({', '.join(coding.strip() for coding in codings)}); this client reads one at most",
                        response.status_code)


async def one_coding_at_most_async(response: httpx.Response) -> None:
    one_coding_at_most(response)


def completed(response: httpx.Response, body: bytes) -> httpx.Response:
    """A streamed `response` as httpx's `request` would have returned it, `body` (decoded) read."""
    headers = [(name, value) for name, value in response.headers.multi_items()
               if name.lower() not in ("content-encoding", "content-length")]
    return httpx.Response(response.status_code, headers=headers, content=body, request=response.request,
                          extensions=response.extensions, default_encoding=response.default_encoding)


def _reader(model: type[M]) -> Callable[[httpx.Response], M]:
    def read(response: httpx.Response) -> M:
        return validated(model, checked(response).content, response)
    return read


def validated(model: type[M], content: bytes | dict, response: httpx.Response | None = None) -> M:
    """`content` (JSON, or what it was parsed to) as `model`; BadAnswer where it is not one (a
    proxy's page, another service at the address)."""
    try:
        return model.model_validate_json(content) if isinstance(content, bytes) else model.model_validate(content)
    except pydantic.ValidationError as error:
        where = f"the answer to {response.request.method} {response.request.url.path}" if response is not None \
            else "an event of the job's event stream"
        raise BadAnswer(f"{where} is {refusal_by_model(error)}",
                        response.status_code if response is not None else 200) from None


def _one_result_per_image(model: type[M], images: int) -> Callable[[httpx.Response], M]:
    """A predict or explain answer, with as many results as images were sent: BadAnswer else."""
    def read(response: httpx.Response) -> M:
        answer = _reader(model)(response)
        results = len(answer.results)  # type: ignore[attr-defined]
        if results != images:
            raise BadAnswer(f"the answer to {response.request.method} {response.request.url.path} has {results} "
                            f"results for the {images} images sent", response.status_code)
        return answer
    return read


def _nothing(response: httpx.Response) -> None:
    checked(response)


def _segment(value: str, named: str) -> str:
    """`value` as a path segment; EmptyName where it is empty, which would ask for another path
    (`/v1/jobs/` for a job, which the service redirects to the list)."""
    if not value:
        raise EmptyName(f"{named} is empty")
    return quote(value, safe="@")


def _model(name: str) -> str:
    return _segment(name, "the model's name")


def _dataset(dataset_id: str) -> str:
    return _segment(dataset_id, "the data set's id")


def _job(job_id: str) -> str:
    return _segment(job_id, "the job's id")


def _given(**fields: Any) -> dict[str, Any]:
    """Form fields without the unset ones; lists and tuples become repeated fields."""
    return {name: [_plain(item) for item in value] if isinstance(value, (tuple, list)) else _plain(value)
            for name, value in fields.items() if value is not None}


def _plain(value: Any) -> Any:
    """numpy's numbers (what argmax gives) as Python's, the only ones httpx sends."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def image_file(image: ImageInput, index: int) -> tuple[str, tuple[str, bytes, str]]:
    if isinstance(image, bytes):
        name, blob = f"image-{index}", image
    elif isinstance(image, Image.Image):
        encoded = io.BytesIO()
        storable = image if image.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16") else image.convert("RGB")
        storable.save(encoded, format="PNG")  # CMYK, YCbCr, LAB, HSV and F are not
        name, blob = f"image-{index}.png", encoded.getvalue()
    elif _named_bytes(image):
        name, blob = image
    else:
        path = Path(image)
        name, blob = path.name, path.read_bytes()
    return "file", (name, blob, mimetypes.guess_type(name)[0] or "application/octet-stream")


def upload_file(field_name: str, value: FileInput, default_name: str) -> tuple[str, tuple[str, Any]]:
    if isinstance(value, bytes):
        return field_name, (default_name, value)
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        return field_name, (path.name, path.read_bytes())
    return field_name, (Path(getattr(value, "name", default_name)).name, value)


def _images(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """One image, or several: a (name, bytes) pair is one; any other tuple, several (paths, say)."""
    if isinstance(images, (str, os.PathLike, bytes, Image.Image)) or _named_bytes(images):
        return [images]
    return list(images)


def _named_bytes(image: object) -> bool:
    return isinstance(image, tuple) and len(image) == 2 and isinstance(image[0], str) and isinstance(image[1], bytes)


def predict(images: ImageInput | Iterable[ImageInput], model: str = DEFAULT_MODEL, top_k: int | None = None,
            resize: str | None = None) -> Call[PredictResponse]:
    files = [image_file(image, index) for index, image in enumerate(_images(images))]
    return Call("POST", f"/v1/models/{_model(model)}/predict", _one_result_per_image(PredictResponse, len(files)),
                data=_given(top_k=top_k, resize=resize), files=files)


def explain(images: ImageInput | Iterable[ImageInput], model: str = DEFAULT_MODEL, method: str | None = None,
            target: int | list[int] | None = None, layer: str | None = None, top_k: int | None = None,
            resize: str | None = None, faithfulness: bool | None = None, outputs: str | Iterable[str] | None = None,
            overlay_format: str | None = None, **options: Any) -> Call[ExplainResponse]:
    """`outputs`: one of heatmap, overlay, map, or several. `overlay_format`: jpeg (the server's
    default), png or webp. `options`: the method's own (steps, baseline, samples, noise, window,
    stride, masks, seed, cells, p); GET /docs lists which method takes which."""
    files = [image_file(image, index) for index, image in enumerate(_images(images))]
    data = _given(method=method, target=[target] if isinstance(target, numbers.Integral) else target, layer=layer,
                  top_k=top_k, resize=resize, faithfulness=faithfulness,
                  outputs=outputs if outputs is None or isinstance(outputs, str) else ",".join(outputs),
                  overlay_format=overlay_format, **options)
    return Call("POST", f"/v1/models/{_model(model)}/explain", _one_result_per_image(ExplainResponse, len(files)),
                data=data, files=files)


def models() -> Call[ModelList]:
    return Call("GET", "/v1/models", _reader(ModelList))


def model(name: str) -> Call[ModelDetail]:
    return Call("GET", f"/v1/models/{_model(name)}", _reader(ModelDetail))


def versions(name: str) -> Call[VersionList]:
    return Call("GET", f"/v1/models/{_model(name)}/versions", _reader(VersionList))


def upload_model(name: str, *, architecture: str | None = None, weights: FileInput | None = None,
                 onnx: FileInput | None = None, labels: FileInput | list[str] | None = None,
                 mean: Iterable[float] | None = None, std: Iterable[float] | None = None,
                 input_size: int | None = None, resize_size: int | None = None, interpolation: str | None = None,
                 cam_layer: str | None = None) -> Call[ModelRef]:
    """`architecture` with `weights` (.safetensors), or `onnx`; `labels` a text file or a list."""
    if isinstance(labels, list):
        labels = "\n".join(labels).encode("utf-8")
    files = [upload_file(name_, value, f"{name_}.bin") for name_, value in
             (("weights", weights), ("onnx", onnx), ("labels", labels)) if value is not None]
    data = _given(name=name, architecture=architecture, mean=list(mean) if mean is not None else None,
                  std=list(std) if std is not None else None, input_size=input_size, resize_size=resize_size,
                  interpolation=interpolation, cam_layer=cam_layer)
    return Call("POST", "/v1/models", _reader(ModelRef), data=data, files=files)


def pin(name: str, version: int) -> Call[ModelRef]:
    """A plain `name` means `version` from now on (a rollback)."""
    return Call("PUT", f"/v1/models/{_model(name)}/default", _reader(ModelRef), json={"version": version})


def unpin(name: str) -> Call[ModelRef]:
    """A plain `name` means its newest version that loads again; the answer says which."""
    return Call("DELETE", f"/v1/models/{_model(name)}/default", _reader(ModelRef))


def delete_model(ref: str) -> Call[None]:
    """`ref`: NAME@VERSION, the version to delete, or a plain NAME: every version of it."""
    return Call("DELETE", f"/v1/models/{_model(ref)}", _nothing)


def upload_dataset(archive: IO[bytes] | bytes, file_name: str, name: str | None = None) -> Call[Dataset]:
    return Call("POST", "/v1/datasets", _reader(Dataset), data=_given(name=name),
                files=[("file", (file_name, archive, "application/octet-stream"))])


def datasets() -> Call[DatasetList]:
    return Call("GET", "/v1/datasets", _reader(DatasetList))


def dataset(dataset_id: str) -> Call[Dataset]:
    return Call("GET", f"/v1/datasets/{_dataset(dataset_id)}", _reader(Dataset))


def delete_dataset(dataset_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/datasets/{_dataset(dataset_id)}", _nothing)


def fine_tune(dataset_id: str, output_model: str, **options: Any) -> Call[Job]:
    """`options`: FineTuneRequest's other fields (schemas/jobs.py), checked by the server."""
    return Call("POST", "/v1/jobs/fine-tune", _reader(Job),
                json={"dataset_id": dataset_id, "output_model": output_model, **options})


def activation_maximization(target: dict[str, Any], model: str = DEFAULT_MODEL, **options: Any) -> Call[Job]:
    """`target`: {"class": N}, {"classes": [...]} or {"layer": NAME, "channels": [...]}."""
    return Call("POST", "/v1/jobs/activation-maximization", _reader(Job),
                json={"model": model, "target": target, **options})


def sweep(base: dict[str, Any], space: dict[str, Any], **options: Any) -> Call[Job]:
    """`base`: a fine-tune's fields (dataset_id, output_model, ...); `space`: the fields to search,
    e.g. {"lr": {"log_uniform": [1e-4, 1e-1]}}; `options`: trials, parallel, metric, ... (SweepRequest)."""
    return Call("POST", "/v1/jobs/sweep", _reader(Job), json={"base": base, "space": space, **options})


# ExplainDatasetRequest's own fields; explain_dataset sends any other keyword as a method option
EXPLAIN_DATASET_FIELDS = set(ExplainDatasetRequest.model_fields)


def explain_dataset(dataset_id: str, model: str = DEFAULT_MODEL, options: dict[str, Any] | None = None,
                    **fields: Any) -> Call[Job]:
    """`fields`: ExplainDatasetRequest's own (method, layer, faithfulness, batch_size); any other
    keyword is a method option (steps, baseline, ...), as for explain, sent in the request's
    `options` with those `options` holds."""
    method_options = {**(options or {}), **{name: value for name, value in fields.items()
                                            if name not in EXPLAIN_DATASET_FIELDS}}
    body = {name: value for name, value in fields.items() if name in EXPLAIN_DATASET_FIELDS}
    if method_options:
        body["options"] = method_options
    return Call("POST", "/v1/jobs/explain-dataset", _reader(Job),
                json={"dataset_id": dataset_id, "model": model, **body})


def jobs(state: str | None = None, type: str | None = None, parent: str | None = None, limit: int | None = None,
         before: str | None = None) -> Call[JobList]:
    """`parent`: the trials of that sweep; `before`: a page's `next`, for the jobs older than its last."""
    return Call("GET", "/v1/jobs", _reader(JobList), params=_given(state=state, type=type, parent=parent,
                                                                    limit=limit, before=before))


def job(job_id: str) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{_job(job_id)}", _reader(Job))


def cancel(job_id: str) -> Call[Job]:
    return Call("DELETE", f"/v1/jobs/{_job(job_id)}", _reader(Job))


def events(job_id: str) -> Call[None]:
    """Streamed: the answer is read line by line through `EventParser`, not by `read`."""
    return Call("GET", f"/v1/jobs/{_job(job_id)}/events", _nothing)


def artifact(job_id: str, name: str) -> Call[None]:
    """Streamed: the file is written a chunk at a time (Client.write_artifact), not read by `read`."""
    return Call("GET", f"/v1/jobs/{_job(job_id)}/artifacts/{quote(name, safe='')}", _nothing)


def artifacts(job_id: str) -> Call[ArtifactList]:
    """Every file the job has written so far."""
    return Call("GET", f"/v1/jobs/{_job(job_id)}/artifacts", _reader(ArtifactList))


class StreamExpired(Exception):
    """The server ended a job's event stream at its time limit (GAZER_EVENT_STREAM_SECONDS), or
    as it began to stop (`server_stopping`): connect again."""

    def __init__(self, detail: str, server_stopping: bool) -> None:
        super().__init__(detail)
        self.server_stopping = server_stopping


# After a stream ended with the server stopping, a follower connects again every
# RECONNECT_PAUSE_SECONDS while nothing answers, for RECONNECT_SECONDS: a restart's time. It never
# connects more often than every RECONNECT_PAUSE_SECONDS (a server that ends each stream at once).
RECONNECT_SECONDS, RECONNECT_PAUSE_SECONDS = 120.0, 1.0


class Reconnection:
    """When a job's follower connects again: at once after a stream's time limit, unless the stream
    began under RECONNECT_PAUSE_SECONDS ago; after the server said it was stopping, once it answers
    again (NoAnswer meanwhile), for a while."""

    def __init__(self) -> None:
        self._stopping_since: float | None = None
        self._connected_at = -RECONNECT_PAUSE_SECONDS

    def connecting(self) -> None:
        self._connected_at = time.monotonic()

    def expired(self, expired: StreamExpired) -> float:
        """The seconds to wait before connecting again."""
        self._stopping_since = time.monotonic() if expired.server_stopping else None
        return max(0.0, self._connected_at + RECONNECT_PAUSE_SECONDS - time.monotonic())

    def pause_after(self, error: NoAnswer) -> float:
        """The seconds to wait before connecting again; `error` is raised again where the server
        did not say it was stopping, or has not answered for RECONNECT_SECONDS since."""
        if self._stopping_since is None or time.monotonic() - self._stopping_since > RECONNECT_SECONDS:
            raise error
        return RECONNECT_PAUSE_SECONDS


class EventParser:
    """Server-sent events, fed as the stream's text comes (`feed_text`) or a line at a time
    (`feed`, without its line break). A job's events are returned; `expired` raises StreamExpired,
    and `error` (the job store cannot be read) the problem it carries as ApiError. A line, or an
    event's data, over MAX_EVENT_CHARACTERS is a BadAnswer."""

    def __init__(self) -> None:
        self._kind = "message"
        self._data: list[str] = []
        self._size = 0  # of the event's data so far
        self._partial = ""  # the start of a line whose break has not come

    def feed_text(self, text: str) -> Iterator[JobEvent]:
        text = self._partial + text
        whole = len(text) - 1 if text.endswith("\r") else len(text)  # its \n may come next
        *lines, rest = LINE_BREAK.split(text[:whole])
        self._partial = rest + text[whole:]
        self._check(len(self._partial))
        for line in lines:
            event = self.feed(line)
            if event is not None:
                yield event

    def _check(self, size: int) -> None:
        if self._size + size > MAX_EVENT_CHARACTERS:
            raise BadAnswer(f"a line or an event of the job's event stream is over "
                            f"{MAX_EVENT_CHARACTERS // 2**20} Mi characters")

    def _event_data(self) -> dict[str, Any]:
        text = "\n".join(self._data)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise BadAnswer(f"an event of the job's event stream is not a JSON object: {shortened(text)!r}")
        return data

    def feed(self, line: str) -> JobEvent | None:
        if line == "":
            if not self._data:
                return None
            kind, data = self._kind, self._event_data()
            self._kind, self._data, self._size = "message", [], 0
            if kind == "expired":
                raise StreamExpired(str(data.get("detail", "the event stream expired")),
                                    str(data.get("type", "")).endswith("/server-stopping"))
            if kind == "error":
                raise ApiError.from_problem(data, 503)
            return JobEvent(kind, validated(Job, data))
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._kind = value
        elif name == "data":
            self._check(len(value))
            self._size += len(value)
            self._data.append(value)
        return None
