"""What one API key may keep: data sets, and model names (a name belongs to the key that
first publishes under it; others, unless they hold `admin`, may not publish there)."""

from __future__ import annotations

from core import datasets
from core.errors import GazerError
from core.models import versions
from core.names import BUILTIN_MODELS
from core.storage import Storage
from service.auth import Caller, Forbidden
from service.settings import Settings


class QuotaExceeded(GazerError):
    code = "quota-exceeded"
    status = 403


def check_dataset_quota(caller: Caller, storage: Storage, settings: Settings) -> None:
    if caller.owner is None:
        return
    held = sum(1 for item in datasets.list_datasets(storage.datasets) if item.get("owner") == caller.owner)
    if held >= settings.max_datasets_per_key:
        raise QuotaExceeded(f"this key holds {held} data sets, its quota (GAZER_MAX_DATASETS_PER_KEY); "
                            f"delete one first")


def claim_model_name(caller: Caller, storage: Storage, name: str, settings: Settings) -> None:
    """Before a fine-tune or upload publishes under `name`: the name is this key's, or free
    and within the key's quota (then it becomes this key's)."""
    if caller.owner is None or name in BUILTIN_MODELS:  # built-in names are refused elsewhere
        return
    owner = versions.name_owner(storage.models, name)
    if owner is None and versions.versions(storage.models, name):
        owner = "the open service"  # published before keys were configured
    if owner is not None and owner != caller.owner:
        if caller.grants("admin"):
            return
        raise Forbidden(f"model name {name!r} belongs to another key; choose another output_model", field="output_model")
    if owner is None and not caller.grants("admin"):
        held = versions.names_owned(storage.models, caller.owner)
        if len(held) >= settings.max_models_per_key:
            raise QuotaExceeded(f"this key holds {len(held)} model names, its quota (GAZER_MAX_MODELS_PER_KEY); "
                                f"delete one first or publish a new version of one of {', '.join(held[:10])}")
    versions.claim_name(storage.models, name, caller.owner)
