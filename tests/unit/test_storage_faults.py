"""Faults of the data folder and of loading: a full disk, interrupted writes, a transient
out-of-memory. Each ends in a clear error and leaves nothing half-written behind."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
import torch

from core import cancellation
from core.datasets import ArchiveLimits, ingest_archive
from core.errors import ModelNotReady, StorageFailed, StorageUnwritable
from core.models import registry as registry_module
from core.models.registry import ModelRegistry
from core.models.versions import save_onnx_version, versions
from core.storage import Storage
from support import shapes_archive
from tests.small_disk import small_disk


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk."""
    with small_disk(tmp_path / "disk", "1m") as mount_point:
        yield mount_point


def test_a_full_disk_during_a_version_save_is_a_clear_error_and_leaves_nothing(full_disk, tmp_path):
    spec = ModelRegistry(Storage(tmp_path / "spec-source"), max_loaded=1).spec("efficientnet_lite0")
    models_dir = full_disk / "models"
    with pytest.raises(StorageFailed, match="could not save a version of 'efficientnet_lite0'.*No space"):
        save_onnx_version(models_dir, spec, b"\0" * 2_000_000)
    assert versions(models_dir, spec.id) == []
    assert list((models_dir / spec.id).iterdir()) == []
    assert StorageFailed.status == 507


def test_a_data_folder_that_refuses_writes_is_a_500_not_a_full_disk(full_disk, tmp_path):
    """A read-only mount (or permissions) is the operator's to fix: more room would not help."""
    spec = ModelRegistry(Storage(tmp_path / "spec-source"), max_loaded=1).spec("efficientnet_lite0")
    models_dir = full_disk / "models"
    models_dir.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(full_disk)], check=True)
    with pytest.raises(StorageUnwritable, match="could not save a version of 'efficientnet_lite0': Read-only") as raised:
        save_onnx_version(models_dir, spec, b"\0" * 1000)
    assert raised.value.status == 500 and "full" not in raised.value.detail


def test_the_sweep_removes_old_partial_folders_and_any_set_aside_to_delete(tmp_path):
    """A removal cut short touches its folder as it goes, so a `.deleting-*` one looks fresh: it
    was left until an hour after the next start."""
    storage = Storage(tmp_path)
    old = [storage.datasets / ".abc.partial", storage.models / "pets" / ".staging-1"]
    set_aside = [storage.datasets / ".deleting-def-x", storage.models / "pets" / ".deleting-3-x"]
    fresh = storage.models / "pets" / ".staging-2"
    kept = [storage.models / "pets" / "1", storage.datasets / "abc"]
    for folder in old + set_aside + [fresh] + kept:
        folder.mkdir(parents=True)
        (folder / "file").write_bytes(b"x")
    an_hour_ago = time.time() - 3700
    for folder in old + kept:
        os.utime(folder, (an_hour_ago, an_hour_ago))
    assert sorted(storage.sweep_partial_folders()) == sorted(old + set_aside)
    assert all(folder.exists() for folder in kept + [fresh])
    assert not any(folder.exists() for folder in old + set_aside)


def test_an_out_of_memory_while_loading_is_not_remembered(tmp_path, monkeypatch):
    """CUDA out of memory is transient: the next request tries again and is served."""
    registry = ModelRegistry(Storage(tmp_path), max_loaded=2)
    real_check = registry_module.check_agreement
    calls = []

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_check(*args, **kwargs)

    monkeypatch.setattr(registry_module, "check_agreement", out_of_memory_once)
    with pytest.raises(ModelNotReady, match="could not be loaded now: OutOfMemoryError"):
        registry.get("efficientnet_lite0")
    assert registry.status()["efficientnet_lite0"]["state"] != "failed"
    assert registry.get("efficientnet_lite0").spec.id == "efficientnet_lite0"
    assert len(calls) == 2


def test_an_ingest_whose_client_has_gone_stops_and_leaves_nothing(tmp_path):
    gone = threading.Event()
    gone.set()
    limits = ArchiveLimits(max_files=100, max_total_bytes=10**8, max_image_pixels=10**8)
    with cancellation.for_client(gone), pytest.raises(cancellation.ClientGone):
        ingest_archive(shapes_archive(per_class=3), tmp_path, None, limits)
    assert list(tmp_path.iterdir()) == []
