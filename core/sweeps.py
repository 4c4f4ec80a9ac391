"""Hyperparameter sweeps: what one is asked to do, and its search space over the fine-tune
parameters (what may be tuned, how each one is sampled, and the check that every value it can
take is one the fine-tune config accepts). The sampling itself is Optuna's, in infra.sweeps."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from core.errors import GazerError, InvalidRequest
from core.params import check_params, choices, field_types, from_params, param
from core.training.config import FineTuneConfig

SWEEP = "sweep"
Metric = Literal["val_accuracy", "val_loss"]
MAX_TRIALS = 200

KINDS = ("log_uniform", "uniform", "int", "choice")
# What a sweep may not vary: what the trials are of, and what its metric is measured on.
FIXED = ("dataset_id", "output_model", "base_model", "val_fraction", "seed")
MAX_DIMENSIONS = 24
MAX_CHOICES = 32


class NoTrialSucceeded(GazerError):
    """A sweep ended without a trial that finished: nothing to register."""

    code = "no-trial-succeeded"
    status = 500


@dataclass(frozen=True)
class SweepConfig:
    base: FineTuneConfig = param(doc="the fine-tune each trial runs, with the sampled values set in it")
    space: dict[str, dict[str, Any]] = param(doc='per parameter (nested ones dotted: "head.dropout"): '
                                                 '{"log_uniform": [lo, hi]}, {"uniform": [lo, hi]}, '
                                                 '{"int": [lo, hi]} or {"choice": [...]}')
    trials: int = param(20, ge=1, le=MAX_TRIALS, doc="fine-tune jobs to run in all")
    parallel: int | None = param(None, ge=1, le=64, doc="trials running at once; default: the live workers, "
                                                               "at most GAZER_MAX_ACTIVE_JOBS_PER_CLIENT - 1")
    metric: Metric = param("val_accuracy", doc="what the best trial is best at (the best epoch's value)")
    seed: int = param(0, ge=0, le=2**32 - 1, doc="the sampler's seed: the same seed samples the same values")

    @property
    def maximize(self) -> bool:
        return self.metric == "val_accuracy"


def most_parallel_trials(max_active_jobs_per_client: int) -> int:
    """A sweep's trials run beside it, outside its client's count of active jobs: held to what
    that count leaves (the API refuses more; a worker runs no more by default)."""
    return max_active_jobs_per_client - 1


def sweep_config(params: dict[str, Any]) -> SweepConfig:
    """The config of wire params, its space parsed and checked against the base fine-tune."""
    config = from_params(SweepConfig, params)
    check_params(config)
    check_space(parse_space(config.space), params["base"])
    return config


@dataclass(frozen=True)
class Dimension:
    name: str       # a fine-tune parameter, nested ones dotted: "head.dropout"
    kind: str       # one of KINDS
    low: float = 0
    high: float = 0
    options: tuple = ()


def tunable_fields(config: type = FineTuneConfig, prefix: str = "") -> dict[str, Any]:
    """Dotted name -> annotation of every field a sweep may vary."""
    found: dict[str, Any] = {}
    for name, annotation in field_types(config).items():
        if not prefix and name in FIXED:
            continue
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            found.update(tunable_fields(annotation, f"{prefix}{name}."))
        else:
            found[prefix + name] = annotation
    return found


def _numeric_kind(annotation: Any) -> str | None:
    """'int' or 'float' for a numeric field (also `int | None`), else None."""
    members = getattr(annotation, "__args__", (annotation,))
    for member in members:
        if member is bool:
            return None
        if member in (int, float):
            return member.__name__
    return None


def _fits(option: Any, annotation: Any, numeric: str | None, allowed: tuple) -> bool:
    """Whether a choice has the field's type (None only where the field takes None)."""
    if option is None:
        return type(None) in getattr(annotation, "__args__", ())
    if numeric is None:
        return isinstance(option, bool) and not allowed
    if isinstance(option, bool) or not isinstance(option, (int, float)):
        return False
    return numeric == "float" or float(option).is_integer()


def parse_space(space: dict[str, Any]) -> list[Dimension]:
    """The dimensions of a wire `space`; InvalidRequest naming `space.NAME` for an unknown
    parameter, a wrong kind for its type or a malformed range."""
    if not isinstance(space, dict) or not space:
        raise InvalidRequest("space must name at least one parameter to tune", field="space")
    if len(space) > MAX_DIMENSIONS:
        raise InvalidRequest(f"space may name at most {MAX_DIMENSIONS} parameters", field="space")
    fields = tunable_fields()
    dimensions = []
    for name, spec in space.items():
        field = f"space.{name}"
        if name not in fields:
            raise InvalidRequest(f"{name!r} is not a fine-tune parameter a sweep can tune", field=field,
                                 valid=sorted(fields))
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise InvalidRequest(f"{name}: give exactly one of {', '.join(KINDS)}", field=field, valid=list(KINDS))
        kind, value = next(iter(spec.items()))
        dimensions.append(_dimension(name, kind, value, fields[name], field))
    return dimensions


def _has_duplicates(options: list) -> bool:
    """Whether two choices are the same value: 1 and 1.0 are, true and 1 are not."""
    return len({(isinstance(option, bool), option) for option in options}) != len(options)


def _dimension(name: str, kind: str, value: Any, annotation: Any, field: str) -> Dimension:
    numeric = _numeric_kind(annotation)
    if kind == "choice":
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_CHOICES:
            raise InvalidRequest(f"{name}: choice takes a list of 1 to {MAX_CHOICES} values", field=field)
        if any(isinstance(option, (dict, list)) for option in value) or _has_duplicates(value):
            raise InvalidRequest(f"{name}: choice takes distinct plain values", field=field)
        allowed = choices(annotation) or ()
        for option in value:
            if option in allowed and not isinstance(option, bool) or _fits(option, annotation, numeric, allowed):
                continue
            if allowed and numeric is None:
                raise InvalidRequest(f"{name}: choose among {', '.join(map(str, allowed))}", field=field,
                                     valid=list(allowed))
            raise InvalidRequest(f"{name}: every choice must be a {numeric or 'true/false'} value", field=field)
        return Dimension(name, kind, options=tuple(int(option) if numeric == "int" and option is not None
                                                   else option for option in value))
    if numeric is None:
        raise InvalidRequest(f"{name} cannot be sampled with {kind}; use choice", field=field)
    if (numeric == "int") != (kind == "int"):
        raise InvalidRequest(f"{name} cannot be sampled with {kind}; use "
                             + ("int" if numeric == "int" else "uniform or log_uniform"), field=field)
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(bound, (int, float)) and not isinstance(bound, bool) for bound in value)):
        raise InvalidRequest(f"{name}: {kind} takes [low, high]", field=field)
    low, high = value
    if not all(math.isfinite(bound) for bound in value) or low > high or (kind != "int" and low == high):
        raise InvalidRequest(f"{name}: {kind} needs finite low < high; got [{low}, {high}]", field=field)
    if kind == "int" and not all(float(bound).is_integer() for bound in value):
        raise InvalidRequest(f"{name}: int takes whole numbers", field=field)
    if kind == "log_uniform" and low <= 0:
        raise InvalidRequest(f"{name}: log_uniform needs low > 0; got {low}", field=field)
    return Dimension(name, kind, int(low) if kind == "int" else float(low), int(high) if kind == "int" else float(high))


def with_values(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """`base` fine-tune params with the sampled `values` (dotted names) set in it."""
    params = copy.deepcopy(base)
    for name, value in values.items():
        *parents, leaf = name.split(".")
        target = params
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return params


def extremes(dimension: Dimension) -> tuple:
    return dimension.options if dimension.kind == "choice" else (dimension.low, dimension.high)


def check_space(dimensions: list[Dimension], base: dict[str, Any]) -> None:
    """Every end of every range (every choice) must be a value the fine-tune field accepts."""
    for dimension in dimensions:
        for value in extremes(dimension):
            try:
                check_params(from_params(FineTuneConfig, with_values(base, {dimension.name: value})))
            except InvalidRequest as error:
                raise InvalidRequest(f"space.{dimension.name}: {error.detail}", field=f"space.{dimension.name}",
                                     **{k: v for k, v in error.extra.items() if k != "field"}) from None


def checked_trials(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials whose checks every trial passes: the base fine-tune with the memory-deciding
    values (batch and input size) at the top of their ranges, two when `input_size` may be null
    (the base model's size, unknown here): one at null, one at the largest size given, and with
    the most epochs (no trial costs more than the costliest of these); and those at the bottom of
    both (null too), with a strategy that trains the backbone where the space has one (one-image
    batches on small inputs are refused only for those)."""
    dimensions = {dimension.name: dimension for dimension in parse_space(params["space"])}
    top: dict[str, Any] = {"epochs": max(extremes(dimensions["epochs"]))} if "epochs" in dimensions else {}
    bottom: dict[str, Any] = {}
    if "batch_size" in dimensions:
        top["batch_size"] = max(extremes(dimensions["batch_size"]))
        bottom["batch_size"] = min(extremes(dimensions["batch_size"]))
    if "strategy" in dimensions:
        training = [strategy for strategy in extremes(dimensions["strategy"]) if strategy != "feature_extraction"]
        bottom["strategy"] = training[0] if training else "feature_extraction"
    if "input_size" not in dimensions:
        heaviest, lightest = [with_values(params["base"], top)], [with_values(params["base"], bottom)]
    else:
        sizes = extremes(dimensions["input_size"])
        given = [size for size in sizes if size is not None]
        null = [None] if None in sizes else []  # the base model's size: larger or smaller than those given
        heaviest = [with_values(params["base"], {**top, "input_size": size})
                    for size in ([max(given)] if given else []) + null]
        lightest = [with_values(params["base"], {**bottom, "input_size": size})
                    for size in ([min(given)] if given else []) + null]
    return heaviest + [trial for trial in lightest if trial not in heaviest]
