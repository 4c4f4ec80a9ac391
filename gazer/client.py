"""Python clients for the Gazer API on httpx: `Client` blocks, `AsyncClient` awaits. Both send
the calls that gazer.calls builds and return the wire models of schemas/; an error answer is
raised as `ApiError`, and no answer (the service cannot be reached, the connection breaks or times
out) as `NoAnswer`, httpx's error its `__cause__`: both are a `GazerError`."""

from __future__ import annotations

import asyncio
import io
import numbers
import os
import time
from contextlib import ExitStack, asynccontextmanager, contextmanager, nullcontext
from typing import IO, Any, AsyncIterator, Callable, ContextManager, Iterable, Iterator, TypeVar

import httpx

from gazer import calls
from gazer.archive import dataset_archive
from gazer.calls import DEFAULT_MODEL, ImageInput
from gazer.classes import UnknownClass, as_index, class_index
from gazer.errors import ApiError, EndedEarly, GazerError, NoAnswer
from gazer.results import ExplainResponse, JobEvent
from schemas.datasets import Dataset, DatasetList
from schemas.jobs import Job, JobList
from schemas.models import ModelDetail, ModelList, ModelRef, PredictResponse, VersionList

__all__ = ["ApiError", "AsyncClient", "Client", "DEFAULT_URL", "GazerError", "JobEvent", "NoAnswer", "UnknownClass",
           "default_url"]

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
# Explanations and model uploads can take minutes on a CPU.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
# The server keeps a quiet event stream alive with a comment at least every 17 s (15 s, and a poll
# of at most 2 s): a stream silent for longer than this is broken (a half-open connection).
STREAM_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
POLL_SECONDS = 0.5
CHUNK_BYTES = 2**20  # of an artifact, written as it comes


# a class by its index or its label
Target = int | str


def _targets(target: Target | Iterable[Target] | None) -> list[Target] | None:
    """`target` as a list (one for every image, or one per image), read once: a generator too."""
    if target is None:
        return None
    if isinstance(target, (str, numbers.Integral)):
        return [target]
    if not isinstance(target, Iterable):
        raise TypeError(f"target: a class index or label, or one per image; got {type(target).__name__}")
    return list(target)


def _labels_in(targets: list[Target] | None) -> bool:
    """Whether `targets` name a class by its label, which needs the model's labels."""
    return any(as_index(one) is None for one in targets or [])


def _indexes(model: str, labels: list[str], targets: list[Target] | None) -> list[int] | None:
    """`targets` as class indexes; `labels`, the model's, are needed only where one is a label."""
    return None if targets is None else [class_index(model, labels, one) for one in targets]


def _class_of(model: str, detail: ModelDetail, given: int | str) -> int:
    """`given` as a class index of the model `detail` describes: UnknownClass for a label none or
    several hold (gazer.classes.class_index), and for an index it has no class of."""
    index = class_index(model, detail.labels, given)
    if not 0 <= index < detail.num_classes:
        raise UnknownClass(f"{model} has no class {index}: its classes are 0 to {detail.num_classes - 1}", [])
    return index


def default_url() -> str:
    return os.environ.get("GAZER_URL") or DEFAULT_URL


def with_scheme(url: str) -> str:
    """`localhost:8000` as http://localhost:8000 (httpx would read `localhost` as the scheme)."""
    return url if "://" in url else f"http://{url}"


def _auth_headers(api_key: str | None, headers: dict[str, str] | None) -> dict[str, str]:
    """`api_key` (default $GAZER_API_KEY) as a bearer token, beside the caller's headers."""
    key = api_key or os.environ.get("GAZER_API_KEY")
    return {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}


@contextmanager
def _answering(url: str) -> Iterator[None]:
    """httpx's transport errors (refused, reset, timed out) raised as NoAnswer, each its cause."""
    try:
        yield
    except httpx.TransportError as error:
        raise NoAnswer(url, error) from error


def _whole(response: httpx.Response) -> httpx.Response:
    """A streamed answer read whole, up to calls.MAX_ANSWER_BYTES."""
    limit = calls.AnswerLimit(response)
    return calls.completed(response, b"".join([limit.take(chunk) for chunk in response.iter_bytes()]))


async def _awhole(response: httpx.Response) -> httpx.Response:
    limit = calls.AnswerLimit(response)
    return calls.completed(response, b"".join([limit.take(chunk) async for chunk in response.aiter_bytes()]))


def _dataset_source(source: str | os.PathLike[str] | bytes) -> ContextManager[tuple[str, IO[bytes] | bytes]]:
    """(file name, archive) to upload: a folder zipped, an archive file opened, bytes as they are."""
    if isinstance(source, bytes):
        return nullcontext(("dataset.zip", source))
    return dataset_archive(source)


class Client:
    """Blocking client: `with Client("http://host:8000") as gazer: gazer.predict("cat.jpg")`.
    `url` defaults to $GAZER_URL, else http://127.0.0.1:8000. Every call raises ApiError for an error
    answer, NoAnswer where none came."""

    def __init__(self, url: str | None = None, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 headers: dict[str, str] | None = None, api_key: str | None = None) -> None:
        self.url = with_scheme(url or default_url())
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=_auth_headers(api_key, headers),
                                  event_hooks={"response": [calls.one_coding_at_most]})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: calls.Call[T]) -> T:
        with _answering(self.url), self._http.stream(**call.request()) as response:
            return call.read(_whole(response))

    @contextmanager
    def _stream(self, call: calls.Call[None], **options: Any) -> Iterator[httpx.Response]:
        """A streamed answer to read as it comes; an error answer is raised, read up to its limit."""
        with _answering(self.url), self._http.stream(**call.request(), **options) as response:
            if not response.is_success:
                calls.checked(_whole(response))
            yield response

    def predict(self, images: ImageInput | Iterable[ImageInput], model: str = DEFAULT_MODEL,
                top_k: int | None = None, resize: str | None = None) -> PredictResponse:
        return self._send(calls.predict(images, model, top_k, resize))

    def explain(self, images: ImageInput | Iterable[ImageInput], model: str = DEFAULT_MODEL,
                method: str | None = None, target: Target | Iterable[Target] | None = None, layer: str | None = None,
                top_k: int | None = None, resize: str | None = None, faithfulness: bool | None = None,
                outputs: Iterable[str] | None = None, **options: Any) -> ExplainResponse:
        """Each result's `explanation.heatmap` is PNG bytes, `.overlay_image` the overlay file's
        bytes (JPEG unless `overlay_format` says otherwise), `.map_array` the raw map as a numpy
        array (with outputs including "map"). `target`: a class index or label (as class_index
        takes it), one for all images or one per image."""
        targets = _targets(target)
        target = _indexes(model, self.model(model).labels if _labels_in(targets) else [], targets)
        return self._send(calls.explain(images, model, method, target, layer, top_k, resize, faithfulness,
                                        outputs, **options))

    def class_index(self, model: str, given: int | str) -> int:
        """A class of `model` by its index or its label (gazer.classes.class_index: "tabby" is 281
        of ImageNet's); UnknownClass names the candidates where none or several hold it, and is
        raised for an index the model has no class of."""
        return _class_of(model, self.model(model), given)

    def models(self) -> ModelList:
        return self._send(calls.models())

    def model(self, name: str) -> ModelDetail:
        return self._send(calls.model(name))

    def versions(self, name: str) -> VersionList:
        return self._send(calls.versions(name))

    def upload_model(self, name: str, **fields: Any) -> ModelRef:
        """`architecture` with `weights` (.safetensors), or `onnx`; see gazer.calls.upload_model."""
        return self._send(calls.upload_model(name, **fields))

    def pin(self, name: str, version: int) -> ModelRef:
        return self._send(calls.pin(name, version))

    def unpin(self, name: str) -> ModelRef:
        return self._send(calls.unpin(name))

    def delete_model(self, ref: str) -> None:
        return self._send(calls.delete_model(ref))

    def upload_dataset(self, source: str | os.PathLike[str] | bytes, name: str | None = None) -> Dataset:
        """`source`: a folder with one folder of images per class (zipped here), a .zip or
        .tar.gz archive, or an archive's bytes."""
        with _dataset_source(source) as (file_name, archive):
            return self._send(calls.upload_dataset(archive, file_name, name))

    def datasets(self) -> DatasetList:
        return self._send(calls.datasets())

    def dataset(self, dataset_id: str) -> Dataset:
        return self._send(calls.dataset(dataset_id))

    def delete_dataset(self, dataset_id: str) -> None:
        return self._send(calls.delete_dataset(dataset_id))

    def fine_tune(self, dataset_id: str, output_model: str, **options: Any) -> Job:
        return self._send(calls.fine_tune(dataset_id, output_model, **options))

    def sweep(self, base: dict[str, Any], space: dict[str, Any], **options: Any) -> Job:
        return self._send(calls.sweep(base, space, **options))

    def explain_dataset(self, dataset_id: str, model: str = DEFAULT_MODEL, **options: Any) -> Job:
        """`options`: method, layer, faithfulness, batch_size, and the method's own (steps=32, ...) as
        explain takes them, or in a dict as `options=`; see gazer.calls.explain_dataset."""
        return self._send(calls.explain_dataset(dataset_id, model, **options))

    def activation_maximization(self, target: dict[str, Any], model: str = DEFAULT_MODEL, **options: Any) -> Job:
        return self._send(calls.activation_maximization(target, model, **options))

    def jobs(self, state: str | None = None, type: str | None = None, parent: str | None = None,
             limit: int | None = None, before: str | None = None) -> JobList:
        return self._send(calls.jobs(state, type, parent, limit, before))

    def job(self, job_id: str) -> Job:
        return self._send(calls.job(job_id))

    def cancel(self, job_id: str) -> Job:
        return self._send(calls.cancel(job_id))

    def wait(self, job_id: str, timeout: float | None = None, poll: float = POLL_SECONDS) -> Job:
        """The job's record once it has ended; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (job := self.job(job_id)).finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.state} after {timeout} s")
            time.sleep(poll)
        return job

    def events(self, job_id: str, on_server_stopping: Callable[[], None] = lambda: None) -> Iterator[JobEvent]:
        """The job's server-sent events until its `end` event, over as many streams as that
        takes (each lasts the server's GAZER_EVENT_STREAM_SECONDS), and across a restart of the
        server (calls.Reconnection), which `on_server_stopping` is told of when it begins."""
        reconnection = calls.Reconnection()
        while True:
            reconnection.connecting()
            try:
                yield from self._event_stream(job_id)
                return
            except calls.StreamExpired as expired:
                if expired.server_stopping:
                    on_server_stopping()
                time.sleep(reconnection.expired(expired))
            except NoAnswer as error:
                time.sleep(reconnection.pause_after(error))

    def _event_stream(self, job_id: str) -> Iterator[JobEvent]:
        with self._stream(calls.events(job_id), timeout=STREAM_TIMEOUT) as response:
            parser = calls.EventParser()
            for text in response.iter_text():
                for event in parser.feed_text(text):
                    yield event
                    if event.kind == "end":
                        return
        raise EndedEarly(job_id)  # not as `expired`, which is followed again

    def artifacts(self, job_id: str) -> list[str]:
        """Names of every file the job has written so far (fetch each with `write_artifact` or `artifact`)."""
        return [found.name for found in self._send(calls.artifacts(job_id)).data]

    def write_artifact(self, job_id: str, name: str, file: IO[bytes]) -> None:
        """The artifact written into the open binary `file` as it comes, never held whole in memory."""
        with self._stream(calls.artifact(job_id, name)) as response:
            for chunk in response.iter_bytes(CHUNK_BYTES):
                file.write(chunk)

    def artifact(self, job_id: str, name: str) -> bytes:
        """The artifact's bytes, held in memory: `write_artifact` for a large one."""
        held = io.BytesIO()
        self.write_artifact(job_id, name, held)
        return held.getvalue()


class AsyncClient:
    """The same calls as `Client`, awaited: `async with AsyncClient(url) as gazer: await gazer.predict(...)`."""

    def __init__(self, url: str | None = None, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 headers: dict[str, str] | None = None, api_key: str | None = None) -> None:
        self.url = with_scheme(url or default_url())
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=_auth_headers(api_key, headers),
                                       event_hooks={"response": [calls.one_coding_at_most_async]})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: calls.Call[T]) -> T:
        with _answering(self.url):
            async with self._http.stream(**call.request()) as response:
                return call.read(await _awhole(response))

    @asynccontextmanager
    async def _stream(self, call: calls.Call[None], **options: Any) -> AsyncIterator[httpx.Response]:
        with _answering(self.url):
            async with self._http.stream(**call.request(), **options) as response:
                if not response.is_success:
                    calls.checked(await _awhole(response))
                yield response

    async def predict(self, images: ImageInput | Iterable[ImageInput], model: str = DEFAULT_MODEL,
                      top_k: int | None = None, resize: str | None = None) -> PredictResponse:
        return await self._send(calls.predict(images, model, top_k, resize))

    async def explain(self, images: ImageInput | Iterable[ImageInput], model: str = DEFAULT_MODEL,
                      method: str | None = None, target: Target | Iterable[Target] | None = None,
                      layer: str | None = None, top_k: int | None = None, resize: str | None = None,
                      faithfulness: bool | None = None, outputs: Iterable[str] | None = None,
                      **options: Any) -> ExplainResponse:
        targets = _targets(target)
        target = _indexes(model, (await self.model(model)).labels if _labels_in(targets) else [], targets)
        return await self._send(calls.explain(images, model, method, target, layer, top_k, resize, faithfulness,
                                              outputs, **options))

    async def class_index(self, model: str, given: int | str) -> int:
        return _class_of(model, await self.model(model), given)

    async def models(self) -> ModelList:
        return await self._send(calls.models())

    async def model(self, name: str) -> ModelDetail:
        return await self._send(calls.model(name))

    async def versions(self, name: str) -> VersionList:
        return await self._send(calls.versions(name))

    async def upload_model(self, name: str, **fields: Any) -> ModelRef:
        return await self._send(calls.upload_model(name, **fields))

    async def pin(self, name: str, version: int) -> ModelRef:
        return await self._send(calls.pin(name, version))

    async def unpin(self, name: str) -> ModelRef:
        return await self._send(calls.unpin(name))

    async def delete_model(self, ref: str) -> None:
        return await self._send(calls.delete_model(ref))

    async def upload_dataset(self, source: str | os.PathLike[str] | bytes, name: str | None = None) -> Dataset:
        with ExitStack() as stack:  # zipping a folder blocks: it runs in a thread
            file_name, archive = await asyncio.to_thread(stack.enter_context, _dataset_source(source))
            return await self._send(calls.upload_dataset(archive, file_name, name))

    async def datasets(self) -> DatasetList:
        return await self._send(calls.datasets())

    async def dataset(self, dataset_id: str) -> Dataset:
        return await self._send(calls.dataset(dataset_id))

    async def delete_dataset(self, dataset_id: str) -> None:
        return await self._send(calls.delete_dataset(dataset_id))

    async def fine_tune(self, dataset_id: str, output_model: str, **options: Any) -> Job:
        return await self._send(calls.fine_tune(dataset_id, output_model, **options))

    async def sweep(self, base: dict[str, Any], space: dict[str, Any], **options: Any) -> Job:
        return await self._send(calls.sweep(base, space, **options))

    async def explain_dataset(self, dataset_id: str, model: str = DEFAULT_MODEL, **options: Any) -> Job:
        return await self._send(calls.explain_dataset(dataset_id, model, **options))

    async def activation_maximization(self, target: dict[str, Any], model: str = DEFAULT_MODEL,
                                      **options: Any) -> Job:
        return await self._send(calls.activation_maximization(target, model, **options))

    async def jobs(self, state: str | None = None, type: str | None = None, parent: str | None = None,
                   limit: int | None = None, before: str | None = None) -> JobList:
        return await self._send(calls.jobs(state, type, parent, limit, before))

    async def job(self, job_id: str) -> Job:
        return await self._send(calls.job(job_id))

    async def cancel(self, job_id: str) -> Job:
        return await self._send(calls.cancel(job_id))

    async def wait(self, job_id: str, timeout: float | None = None, poll: float = POLL_SECONDS) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (job := await self.job(job_id)).finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.state} after {timeout} s")
            await asyncio.sleep(poll)
        return job

    async def events(self, job_id: str,
                     on_server_stopping: Callable[[], None] = lambda: None) -> AsyncIterator[JobEvent]:
        """As Client.events. To stop before the job ends, iterate within `contextlib.aclosing(...)`:
        an async generator left early keeps its stream (one of the client's) open until it is
        collected."""
        reconnection = calls.Reconnection()
        while True:
            reconnection.connecting()
            try:
                async for event in self._event_stream(job_id):
                    yield event
                return
            except calls.StreamExpired as expired:
                if expired.server_stopping:
                    on_server_stopping()
                await asyncio.sleep(reconnection.expired(expired))
            except NoAnswer as error:
                await asyncio.sleep(reconnection.pause_after(error))

    async def _event_stream(self, job_id: str) -> AsyncIterator[JobEvent]:
        async with self._stream(calls.events(job_id), timeout=STREAM_TIMEOUT) as response:
            parser = calls.EventParser()
            async for text in response.aiter_text():
                for event in parser.feed_text(text):
                    yield event
                    if event.kind == "end":
                        return
        raise EndedEarly(job_id)  # not as `expired`, which is followed again

    async def artifacts(self, job_id: str) -> list[str]:
        return [found.name for found in (await self._send(calls.artifacts(job_id))).data]

    async def write_artifact(self, job_id: str, name: str, file: IO[bytes]) -> None:
        """The artifact written into the open binary `file` as it comes (the writes block)."""
        async with self._stream(calls.artifact(job_id, name)) as response:
            async for chunk in response.aiter_bytes(CHUNK_BYTES):
                file.write(chunk)

    async def artifact(self, job_id: str, name: str) -> bytes:
        held = io.BytesIO()
        await self.write_artifact(job_id, name, held)
        return held.getvalue()
