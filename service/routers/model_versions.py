"""Bring your own model: upload (safetensors weights for a torchvision or timm architecture, or
an ONNX file), list versions, pin the default version, delete a version."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile, status
from starlette.concurrency import run_in_threadpool

from core.errors import InvalidRequest, PayloadTooLarge
from core.models import onnx_upload, refs, upload, versions
from core.models.onnx_export import reference_onnx
from core.models.refs import parse_ref
from core.names import BUILTIN_MODELS
from core.models.spec import ModelSpec
from core.params import field_bounds
from core.storage import Storage, check_name
from schemas import models as wire
from service.auth import Caller, CallerDep, requires
from service.dependencies import QueueDep, RegistryDep, SettingsDep, upload_slot
from service.form_fields import CommaList, refuse_unknown_fields
from service.queue import JobQueue
from service.quotas import check_may_delete_versions, claim_model_name, release_unused_claim, check_unread
from service.settings import Settings

router = APIRouter(prefix="/v1/models", tags=["models"])
ADMIN, JOBS, PREDICT = Depends(requires("admin")), Depends(requires("jobs")), Depends(requires("predict"))

MAX_LABELS_BYTES = 4 * 1024 * 1024
# Every answer repeats the names of its top classes: 1000 names of 4000 characters made a 6 KB
# predict request a 260 MB answer. ImageNet's longest is 121.
MAX_LABEL_CHARACTERS = 256


async def _read(file: UploadFile | None, limit: int, field: str) -> bytes | None:
    if file is None:
        return None
    blob = await file.read(limit + 1)
    if len(blob) > limit:
        raise PayloadTooLarge(f"{field} is over the limit of {limit} bytes", field=field)
    return blob


def _labels(blob: bytes | None) -> list[str] | None:
    if blob is None:
        return None
    try:
        # lines end at \n, \r\n or \r alone: splitlines also splits at U+2028, \x1c, \x85, ... which
        # shifted every name after one holding it by a class
        lines = re.split(r"\r\n|\r|\n", blob.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InvalidRequest("labels must be UTF-8 text, one class name per line", field="labels") from None
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():  # names may repeat (ImageNet has two cranes), but a class needs one
            raise InvalidRequest(f"labels line {number} is empty: every class needs a name", field="labels")
        if len(line.strip()) > MAX_LABEL_CHARACTERS:
            raise InvalidRequest(f"labels line {number} is {len(line.strip())} characters long; a class name has at "
                                 f"most {MAX_LABEL_CHARACTERS}", field="labels")
        if unsafe := [character for character in line if _unsafe_in_a_label(character)]:
            raise InvalidRequest(f"labels line {number} holds {ascii(unsafe[0])}: a class name may not hold control "
                                 f"or text-direction characters (they rewrite terminals and what a page shows)",
                                 field="labels")
    return [line.strip() for line in lines]


_TEXT_DIRECTION = {"\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def _unsafe_in_a_label(character: str) -> bool:
    """Control characters, line and paragraph separators, and the marks, embeddings, overrides and
    isolates that set the direction of text."""
    return unicodedata.category(character) in ("Cc", "Zl", "Zp") or character in _TEXT_DIRECTION


@router.post("", response_model=wire.ModelRef, status_code=status.HTTP_201_CREATED,
             dependencies=[ADMIN, Depends(refuse_unknown_fields)])
async def upload_model(
    request: Request,
    response: Response,
    registry: RegistryDep,
    queue: QueueDep,
    caller: CallerDep,
    settings: SettingsDep,
    name: Annotated[str, Form(description="the model's name (a new version when it exists); 1-64 letters, "
                                          "digits, '_', '-', '.'")],
    architecture: Annotated[str | None, Form(description="a torchvision classification builder (resnet50, "
                                                         "vgg16_bn, ...) or timm:NAME; with `weights`")] = None,
    weights: Annotated[UploadFile | None, File(description=".safetensors state dict for `architecture` "
                                                           "(pickles are refused)")] = None,
    onnx: Annotated[UploadFile | None, File(description="instead of architecture + weights: a self-contained "
                                                        "ONNX classifier, NCHW float32 in, logits out")] = None,
    labels: Annotated[UploadFile | None, File(
        description="text, one class name per line; default the newest earlier version's where it has as many "
                    "classes, else the indices")] = None,
    mean: Annotated[Annotated[list[float], CommaList] | None, Form(
        description="3 numbers for pixels in 0..1, the field repeated or comma-separated; default a timm model's "
                    "own, else ImageNet's")] = None,
    std: Annotated[Annotated[list[float], CommaList] | None, Form(
        description="3 numbers for pixels in 0..1, the field repeated or comma-separated; default a timm model's "
                    "own, else ImageNet's")] = None,
    input_size: Annotated[int | None, Form(description="default the architecture's (299 for inception_v3)",
                                           **field_bounds(upload.Preprocessing, "input_size"))] = None,
    resize_size: Annotated[int | None, Form(description="short side before the centre crop; default input_size "
                                                        "over a timm model's crop fraction, else "
                                                        "round(input_size / 0.875)",
                                            **field_bounds(upload.Preprocessing, "resize_size"))] = None,
    interpolation: Annotated[str | None, Form(description="bilinear or bicubic; default a timm model's own, "
                                                          "else bilinear")] = None,
    cam_layer: Annotated[str | None, Form(description="default: the feature map that global pooling sees")] = None,
) -> wire.ModelRef:
    if (onnx is None) == (weights is None) or (weights is not None and not architecture):
        raise InvalidRequest("send either `architecture` with `weights` (.safetensors) or `onnx`", field="weights")
    if onnx is not None:
        for field, value in (("architecture", architecture), ("cam_layer", cam_layer)):
            if value is not None:
                raise InvalidRequest(f"`{field}` goes with `weights`: an ONNX model is served as its file says, "
                                     f"with no torch network or CAM layer", field=field)
    given = {"mean": tuple(mean) if mean else None, "std": tuple(std) if std else None, "input_size": input_size,
             "resize_size": resize_size, "interpolation": interpolation}
    preprocessing = upload.Preprocessing(**{key: value for key, value in given.items() if value is not None})
    check_name(name, "name")
    class_names = _labels(await _read(labels, MAX_LABELS_BYTES, "labels"))

    def labelled(spec: ModelSpec) -> ModelSpec:
        """Sent without labels, a version keeps the newest earlier version's, where it has as many classes."""
        earlier = refs.versions(registry.storage.models, name)
        if class_names is not None or not earlier:
            return spec
        kept = registry.spec(f"{name}@{max(earlier)}").labels
        return replace(spec, labels=kept) if len(kept) == spec.num_classes else spec

    if onnx is not None:
        def register(blob: bytes) -> ModelSpec:
            limits = onnx_upload.OnnxCheckLimits(settings.onnx_check_memory_bytes, settings.onnx_check_seconds,
                                            settings.max_batch)
            reference = reference_onnx(registry.storage.onnx_cache)
            spec, checked = onnx_upload.onnx_model(name, blob, class_names, preprocessing, limits, reference)
            return registry.register_onnx(labelled(spec), checked)
    else:
        def register(blob: bytes) -> ModelSpec:
            limits = upload.WeightsCheckLimits(settings.weights_check_memory_bytes, settings.weights_check_seconds)
            return registry.register_checked(name, lambda staging: labelled(upload.checked_torch_model(
                staging, name, architecture, blob, class_names, preprocessing, cam_layer, limits)))

    model_file, field = (onnx, "onnx") if onnx is not None else (weights, "weights")
    mark = await run_in_threadpool(_claim, caller, registry.storage, queue, name, settings)
    try:
        async with upload_slot(request):
            # read from the spooled upload only now: uploads waiting for the slot hold no model in memory
            blob = await _read(model_file, settings.max_model_bytes, field)
            registry.storage.check_room(len(blob) * (1 if onnx is not None else 2))  # weights + their ONNX export
            spec = await run_in_threadpool(register, blob)
    except Exception:  # refused: the claim holds nothing, unless another upload or job holds it
        versions.end_upload(mark)
        await run_in_threadpool(_release, caller, registry.storage, queue, name)
        raise
    finally:
        versions.end_upload(mark)
    response.headers["Location"] = f"/v1/models/{spec.ref}"
    return wire.ModelRef(id=spec.id, version=spec.version)


def _claim(caller: Caller, storage: Storage, queue: JobQueue, name: str, settings: Settings) -> Path | None:
    """The name claimed, and this upload's mark on it (versions.start_upload)."""
    with queue.claim_lock(caller.owner, name):
        claim_model_name(caller, storage, queue, name, settings)
        return versions.start_upload(storage.models, name)


def _release(caller: Caller, storage: Storage, queue: JobQueue, name: str) -> None:
    with queue.claim_lock(caller.owner, name):
        release_unused_claim(caller, storage, queue, name)


# Plain `def` from here on: these read the models folder, so FastAPI runs them in its thread pool.
def _plain(name: str) -> str:
    """A model's name, as /versions and /default take it: `mv@1` was refused as a name of bad letters."""
    if "@" in name:
        raise InvalidRequest(f"{name[:80]!r} names a version; this takes the model's name alone "
                             f"({name.partition('@')[0][:64]!r})", field="name")
    return name


@router.get("/{name}/versions", response_model=wire.VersionList, dependencies=[PREDICT])
def list_versions(name: str, registry: RegistryDep) -> wire.VersionList:
    name = _plain(name)
    default = registry.spec(name).version
    found = [registry.spec(f"{name}@{version}") for version in registry.versions(name)]
    return wire.VersionList(
        data=[wire.Version(version=spec.version, architecture=spec.architecture, description=spec.description,
                           default=spec.version == default, state=str(registry.state(spec.ref)["state"]))
              for spec in found],
        count=len(found), default=default, pinned=registry.pinned(name))


@router.put("/{name}/default", response_model=wire.ModelRef, dependencies=[ADMIN])
def pin_default(name: str, body: wire.PinRequest, registry: RegistryDep) -> wire.ModelRef:
    """A plain `name` resolves to this version from now on (a rollback); without a pin, to the
    newest version that loads."""
    registry.pin(_plain(name), body.version)
    return wire.ModelRef(id=name, version=body.version)


@router.delete("/{name}/default", response_model=wire.ModelRef, dependencies=[ADMIN])
def unpin_default(name: str, registry: RegistryDep) -> wire.ModelRef:
    """Undoes a pin: a plain `name` resolves to its newest version that loads; answers that version."""
    registry.unpin(_plain(name))
    return wire.ModelRef(id=name, version=registry.spec(name).version)


@router.delete("/{model}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, dependencies=[JOBS])
def delete_version(model: str, registry: RegistryDep, caller: CallerDep, queue: QueueDep) -> None:
    """`NAME@VERSION`: that version; a plain `NAME`: every version (the model). By an admin key or
    the key that holds NAME (the one whose fine-tunes publish there); built-in models cannot be
    deleted (409), nor a version that queued or running jobs read (409 naming them)."""
    name, version = parse_ref(model)
    check_may_delete_versions(caller, registry.storage, name)
    with queue.model_lock(name):
        if name not in BUILTIN_MODELS:  # those: the registry's 409
            check_unread(f"model {model!r}", queue.jobs_using_model(name, version), caller, "model")
        registry.delete(model)
