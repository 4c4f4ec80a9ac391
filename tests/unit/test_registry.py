"""Model references, names that become folders, and models that fail to load."""

from __future__ import annotations

import anyio
import pytest

from core.errors import InvalidRequest, ModelNotReady, UnknownModel
from core.models.onnx_export import onnx_path
from core.models import registry as registry_module
from core.models.refs import parse_ref
from core.models.registry import ModelRegistry
from core.storage import Storage, check_name
from service import default_model


def test_model_references_are_name_or_name_at_an_ascii_version():
    assert parse_ref("pets") == ("pets", None)
    assert parse_ref("pets@12") == ("pets", 12)
    for bad in ("pets@x", "pets@²", "pets@١", "pets@-1", "pets@1.5"):  # ² and ١ pass str.isdigit
        with pytest.raises(UnknownModel):
            parse_ref(bad)


@pytest.mark.parametrize("name", ["pets\n", ".hidden", "a/b", "..", "a..b", "", "x" * 65, "naïve"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(InvalidRequest):
        check_name(name, "output_model")


def test_a_model_that_fails_to_load_is_not_served_and_says_why_until_it_is_tried_again(tmp_path, monkeypatch):
    storage = Storage(tmp_path)
    registry = ModelRegistry(storage, max_loaded=8)
    spec = registry.spec("efficientnet_lite1")
    cached = onnx_path(storage.onnx_cache, spec)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"this is not an ONNX file")
    with pytest.raises(ModelNotReady, match="loading failed"):
        registry.get("efficientnet_lite1")
    with pytest.raises(ModelNotReady, match="loading failed"):  # recorded, not retried per request
        registry.get("efficientnet_lite1")
    status = registry.status()["efficientnet_lite1"]
    assert status["state"] == "failed" and "loading failed" in status["reason"]
    cached.unlink()  # mended (or the failure was one that passes): the next try after the wait serves it
    monkeypatch.setattr(registry_module, "RETRY_FAILED_LOAD_SECONDS", 0.0)
    assert registry.status()["efficientnet_lite1"]["state"] == "not_loaded"  # the wait is over: it will be tried
    assert registry.get("efficientnet_lite1").spec.id == "efficientnet_lite1"
    assert registry.status()["efficientnet_lite1"]["state"] == "ready"


def test_the_api_tries_the_default_model_again_after_the_failure_wait_not_every_check(tmp_path, monkeypatch):
    """A failure that may pass (a full disk) is not remembered as failed: the keeper tried a whole
    load, with its traceback, every 5 s."""
    registry = ModelRegistry(Storage(tmp_path), max_loaded=8)
    tries = []

    def disk_full(spec):
        tries.append(spec.ref)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry, "_load", disk_full)
    monkeypatch.setattr(default_model, "CHECK_SECONDS", 0.01)
    monkeypatch.setattr(default_model, "RETRY_FAILED_LOAD_SECONDS", 30.0)

    async def run() -> str | None:
        said = await default_model.load(registry, "efficientnet_lite0")
        with anyio.move_on_after(0.5):
            await default_model.keep_loaded_forever(registry, "efficientnet_lite0", said)
        return said

    assert "could not be loaded now" in anyio.run(run)
    assert tries == ["efficientnet_lite0@1"]
