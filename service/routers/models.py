"""Models: list, describe, predict, explain."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import threading
import time
from typing import Annotated, Any, Callable, Literal

import anyio
import numpy as np
import torch
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from core import cancellation, device_preprocessing, parallel, pipeline
from core.encoding import MEDIA_TYPES
from core.errors import ExplanationTooLong, GazerError, InvalidRequest
from core.explain.faithfulness import DEFAULT_STEPS, Faithfulness
from core.imaging import RESIZE_MODES, check_resize, declared_pixels, decode_images, needed_sides, preprocess
from core.models.spec import ModelSpec
from core.names import BUILTIN_MODELS, MAX_INDEX, MAX_TOP_K, OUTPUTS
from schemas import models as wire
from service.dependencies import (MetricsDep, ModelDep, RegistryDep, SettingsDep, admitted, explanation_slot,
                                  read_uploads)
from service.auth import CallerDep
from service.disconnects import client_watch
from service.form_fields import CommaList, refuse_unknown_fields
from service.method_options import method_options, methods_description
from service.negotiation import accepts_json, preferred_image
from service.rate_limits import client_id
from service.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/models", tags=["models"])

Files = Annotated[list[UploadFile], File(description="one or more images (JPEG, PNG, WebP, TIFF, BMP, GIF)")]
TopK = Annotated[int, Form(ge=1, le=MAX_TOP_K, description="how many classes to return per image")]
Resize = Annotated[str, Form(description="crop: the model's own preprocessing (short side to S + 32, centre crop "
                                         "S); stretch: the whole image resized to S x S, nothing cut off",
                              json_schema_extra={"enum": list(RESIZE_MODES)})]


def _summary(spec: ModelSpec) -> wire.ModelSummary:
    return wire.ModelSummary(id=spec.id, version=spec.version, architecture=spec.architecture,
                             input_size=spec.input_size, num_classes=spec.num_classes,
                             description=spec.description, builtin=spec.id in BUILTIN_MODELS)


def _unit_scale(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(value / 255.0, 6) for value in values)


def _ref(spec: ModelSpec) -> wire.ModelRef:
    return wire.ModelRef(id=spec.id, version=spec.version)


def _predictions(predictions: list[pipeline.Prediction]) -> list[wire.Prediction]:
    return [wire.Prediction(index=p.index, label=p.label, probability=p.probability) for p in predictions]


def _json(body: BaseModel) -> Response:
    """The model is built (so validated) here; skip FastAPI's second validation pass."""
    return Response(body.model_dump_json(), media_type="application/json")


def _faithfulness(scores: Faithfulness | None) -> wire.FaithfulnessScores | None:
    if scores is None:
        return None
    return wire.FaithfulnessScores(deletion=scores.deletion, insertion=scores.insertion, steps=scores.steps)


def _base64(blob: bytes | None) -> str | None:
    return base64.b64encode(blob).decode("ascii") if blob is not None else None


def _decode_all(blobs: list[bytes], names: list[str | None], settings: Settings, on_stage: pipeline.OnStage,
                spec: ModelSpec, declared: list[int] | None = None) -> list:
    started = time.perf_counter()
    images = decode_images(blobs, settings.max_image_pixels, settings.max_request_pixels, names, declared,
                           needed_sides(spec))
    on_stage("decode", time.perf_counter() - started)
    return images


async def _decoded_and_explained(request: Request, blobs: list[bytes], declared: list[int], names: list[str | None],
                                 settings: Settings, on_stage: pipeline.OnStage, spec: ModelSpec, what: str,
                                 check: Callable[[list], None], explain: Callable[[list], list[pipeline.ImageResult]],
                                 refused: Callable[[], None]) -> list[pipeline.ImageResult]:
    """`blobs` decoded on the CPU pool and `check`ed, then explained on one of the explanation
    threads; dropped where its client has gone, and stopped (ExplanationTooLong) once it has run
    for GAZER_EXPLAIN_SECONDS. `refused` is called where a file or the check refuses (413, 422):
    nothing has run then."""
    out_of_time = threading.Event()
    loop = asyncio.get_running_loop()
    deadline: list[asyncio.TimerHandle] = []
    async with client_watch(request) as gone:
        def stop() -> None:
            out_of_time.set()
            gone.set()  # its work is dropped as if its client had gone

        def work(images: list) -> list[pipeline.ImageResult]:
            # armed on the event loop once a thread takes it up: a threading.Timer costs a thread
            # (0.3 ms) per request
            loop.call_soon_threadsafe(lambda: deadline.append(loop.call_later(settings.explain_seconds, stop)))
            with cancellation.for_client(gone):
                return explain(images)

        try:
            try:
                images = await asyncio.wrap_future(parallel.submit(
                    lambda: _decode_all(blobs, names, settings, on_stage, spec, declared), spread=len(blobs) > 1))
                check(images)
            except GazerError:
                refused()
                raise
            return await anyio.to_thread.run_sync(work, images, limiter=request.app.state.explanation_threads)
        except cancellation.ClientGone as gone_error:
            if out_of_time.is_set():
                raise ExplanationTooLong(f"{what} ran for {settings.explain_seconds:g} s (GAZER_EXPLAIN_SECONDS) and "
                                         f"was stopped: ask for less (fewer files, steps, samples or masks)") from None
            log.info("%s dropped: %s", what, gone_error.detail)
            raise
        finally:
            for handle in deadline:  # armed before the thread's answer reached the loop
                handle.cancel()


@router.get("", response_model=wire.ModelList)
def list_models(registry: RegistryDep) -> wire.ModelList:
    """Plain `def`: it reads the models folder, so FastAPI runs it in its thread pool."""
    specs = [registry.spec(model_id) for model_id in registry.model_ids()]
    return wire.ModelList(data=[_summary(spec) for spec in specs], count=len(specs))


@router.get("/{model}", response_model=wire.ModelDetail)
def describe_model(model: ModelDep, registry: RegistryDep) -> wire.ModelDetail:
    spec = model.spec
    return wire.ModelDetail(
        **_summary(spec).model_dump(), labels=list(spec.labels), default_layer=spec.cam_layer, layers=list(model.layers),
        methods=model.methods, layer_methods=pipeline.layer_methods(model),
        method_options=pipeline.method_options(model),
        default_method=pipeline.default_method(model), forward_cost=round(model.forward_cost, 2),
        attention=model.attention,
        weights_digest=spec.weights_digest,
        status=registry.state(spec.ref)["state"],
        # for pixels in 0..1, as an upload gives them (a spec keeps them for 0..255)
        preprocessing=wire.Preprocessing(mean=_unit_scale(spec.mean), std=_unit_scale(spec.std),
                                         center_crop=spec.input_size,
                                         resize_short_side_to=spec.input_size + spec.resize_margin,
                                         interpolation=spec.interpolation))


@router.post("/{model}/predict", response_model=wire.PredictResponse, dependencies=[Depends(refuse_unknown_fields)])
async def predict(request: Request, model: ModelDep, settings: SettingsDep, metrics: MetricsDep, caller: CallerDep,
                  file: Files, top_k: TopK = 5, resize: Resize = "crop") -> Response:
    check_resize(resize)
    with admitted(request, model, caller):
        blobs = await read_uploads(file, settings)
        metrics.batch_size.labels("predict").observe(len(blobs))
        on_stage = metrics.stage_recorder(model.spec.id)

        def prepare() -> np.ndarray | torch.Tensor:
            if settings.decode_on_device and device_preprocessing.decodable(
                    blobs, settings.max_image_pixels, settings.max_request_pixels):
                started = time.perf_counter()
                device = model.predictor.input_device
                try:
                    batch = device_preprocessing.preprocess(blobs, model.spec, resize, device)
                except RuntimeError as error:  # the decoder refused a file: the CPU path says why, or decodes it
                    log.warning("decoding on %s failed, decoding with Pillow: %s", device, str(error)[:300])
                else:
                    on_stage("device_preprocess", time.perf_counter() - started)
                    return batch
            images = _decode_all(blobs, [upload.filename for upload in file], settings, on_stage, model.spec)
            started = time.perf_counter()
            batch, _ = preprocess(images, model.spec, resize)
            on_stage("preprocess", time.perf_counter() - started)
            return batch

        async with client_watch(request) as gone:
            # decoded on the CPU pool while the model runs other requests' batches; the model
            # runs this one with whatever else is waiting then
            batch = await asyncio.wrap_future(parallel.submit(prepare, spread=len(blobs) > 1))
            started = time.perf_counter()
            logits = (await asyncio.wrap_future(pipeline.submit_onnx(model, ("logits",), batch, gone)))[0]
            on_stage("ort", time.perf_counter() - started)
        results = pipeline.ranked(model, logits, top_k)
    return _json(wire.PredictResponse(model=_ref(model.spec),
                                      results=[wire.PredictResult(predictions=_predictions(r.predictions))
                                               for r in results]))


def _explain_answer(accept: str, files: int, outputs: list[str] | None, faithfulness: bool,
                    settings: Settings) -> tuple[str | None, tuple[str, ...]]:
    """The image format to answer in (None: JSON), as the Accept header prefers, and what to
    render: the request's outputs (the field repeated, or a comma list), else the overlay for an
    image answer, else the operator's default. Where an image cannot carry what was asked, JSON
    if the header allows it, else a refusal saying why."""
    if outputs is not None and not outputs:
        raise InvalidRequest("outputs names nothing: name any of heatmap, overlay, map, or leave the field out "
                             "for the default", field="outputs", valid=list(OUTPUTS))
    image_answer = preferred_image(accept, MEDIA_TYPES)
    if image_answer is None:
        return None, tuple(outputs or settings.explain_outputs)
    said = f"Accept: {MEDIA_TYPES[image_answer]}"
    if files != 1:
        why = InvalidRequest(f"{said} answers one overlay image, so send exactly one file", field="file")
    elif outputs and "overlay" not in outputs:
        why = InvalidRequest(f"{said} answers the overlay, so outputs must include it", field="outputs")
    elif faithfulness:
        why = InvalidRequest(f"{said} answers the overlay alone, with no room for faithfulness scores; ask for JSON",
                             field="faithfulness")
    else:
        return image_answer, tuple(outputs or ["overlay"])
    if accepts_json(accept):
        return None, tuple(outputs or settings.explain_outputs)
    raise why


def _explain_result(result: pipeline.ImageResult) -> wire.ExplainResult:
    explanation = result.explanation
    return wire.ExplainResult(predictions=_predictions(result.predictions), explanation=wire.Explanation(
        method=explanation.method,
        target=_predictions([explanation.target])[0],
        layer=explanation.layer,
        heatmap_png=_base64(explanation.heatmap_png),
        overlay=_base64(explanation.overlay),
        overlay_format=explanation.overlay_format if explanation.overlay is not None else None,
        map=explanation.map,
        faithfulness=_faithfulness(explanation.faithfulness),
        timings_ms=explanation.timings_ms,
        flat=explanation.flat,
        crop=wire.CropRegion(**dict(zip(("left", "top", "right", "bottom"), explanation.crop)))
        if explanation.crop else None,
        gate=wire.GateRange(**dataclasses.asdict(explanation.gate)) if explanation.gate else None))


@router.post("/{model}/explain", response_model=wire.ExplainResponse,
             responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}},
                              "description": "JSON, or with `Accept: image/jpeg`, `image/png` or `image/webp` and "
                                             "one file the overlay in that format"}})
async def explain(
    request: Request,
    model: ModelDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    caller: CallerDep,
    file: Files,
    options: Annotated[dict[str, Any], Depends(method_options)],
    method: Annotated[str | None, Form(description=methods_description())] = None,
    target: Annotated[Annotated[list[Annotated[int, Field(ge=0, lt=MAX_INDEX)]], CommaList] | None,
                      Form(description="class index; one for all files or one per file (the field repeated "
                                       "or comma-separated); default each image's top-1")] = None,
    layer: Annotated[str | None, Form(description="layer to explain, for a method that takes one (the model's "
                                                  "`layer_methods`); default the model's CAM layer")] = None,
    top_k: TopK = 5,
    resize: Resize = "crop",
    faithfulness: Annotated[bool, Form(description="also score each map by deletion and insertion "
                                                   f"(2 x {DEFAULT_STEPS + 1} forward passes per image)")] = False,
    outputs: Annotated[Annotated[list[str], CommaList] | None, Form(description="any of heatmap, overlay, map (the raw [0, 1] map), the "
                                                          "field repeated or comma-separated; default heatmap and overlay")] = None,
    overlay_format: Annotated[Literal["jpeg", "png", "webp"], Form(
        description="the overlay's format: jpeg (quality 75, a tenth of PNG's size), png (lossless) or webp; "
                    "an Accept header for an image decides it instead")] = "jpeg",
) -> Response:
    method = pipeline.default_method(model) if method is None else method
    image_answer, wanted = _explain_answer(request.headers.get("accept", ""), len(file), outputs, faithfulness,
                                           settings)
    overlay_format = image_answer or overlay_format
    cost = pipeline.explain_cost(model, method, layer, options, len(file), faithfulness, wanted)
    check_resize(resize)
    pipeline.resolve_targets(target, len(file), model.spec)
    if cost > settings.explain_budget:
        raise InvalidRequest(f"this explanation costs {cost} forward passes ({method} on {len(file)} files"
                             f"{pipeline.forward_cost_note(model)}); the budget of one request is "
                             f"{settings.explain_budget}: send fewer files or fewer steps, samples or masks",
                             field="file", cost=cost, budget=settings.explain_budget)
    # the form is read by now: a slot held from here waits on no upload; a request refused
    # (503, 413, a file that is not an image) has spent none of its client's compute
    with admitted(request, model, caller), explanation_slot(request, caller):
        blobs = await read_uploads(file, settings)
        # headers on the CPU pool: a crafted PNG's take seconds to read
        pixels = await asyncio.wrap_future(parallel.submit(
            lambda: [declared_pixels(blob, needed_sides(model.spec)) for blob in blobs]))
        declared = [whole for whole, _ in pixels]
        # its images stay decoded until its pictures are drawn, at the scale they are decoded
        # at: held against the process's budget; a request over its own limit holds none
        # (decoding refuses it, 413)
        held = sum(kept for _, kept in pixels) if sum(declared) <= settings.max_request_pixels else 0
        client = client_id(caller, request)
        with request.app.state.explained_pixels.holding(held, client):
            compute = request.app.state.compute_limiter
            compute.take(client, cost)
            metrics.batch_size.labels("explain").observe(len(blobs))
            on_stage = metrics.stage_recorder(model.spec.id)
            results = await _decoded_and_explained(
                request, blobs, declared, [upload.filename for upload in file], settings, on_stage, model.spec,
                f"{method} on {model.spec.ref}",
                lambda images: pipeline.check_overlay_sides(images, wanted, overlay_format),
                lambda images: pipeline.explain(model, images, method, target, layer, options, top_k, wanted,
                                                resize, faithfulness, on_stage, overlay_format),
                lambda: compute.give_back(client, cost))
    answer = Response(results[0].explanation.overlay, media_type=MEDIA_TYPES[image_answer]) \
        if image_answer is not None else \
        _json(wire.ExplainResponse(model=_ref(model.spec), results=[_explain_result(r) for r in results]))
    answer.headers["Vary"] = "Accept"  # for caches: the same request answers JSON or an image
    return answer
