"""Sweep spaces (parsing and the bounds of the fine-tune fields), the sampler's seed, and how a
trial reports its epochs and stops pruned."""

from __future__ import annotations

import math

import optuna
import pytest

from core.errors import InvalidRequest
from core.jobs import JobPruned
from core.sweep_trials import pruned_when_told
from core.sweeps import Dimension, checked_trials, parse_space, sweep_config, with_values
from infra.sweeps import make_sampler, suggest

BASE = {"dataset_id": "d", "output_model": "out"}
SPACE = {"lr": {"log_uniform": [1e-4, 10]}, "weight_decay": {"log_uniform": [1e-6, 1e-2]},
         "head.dropout": {"uniform": [0, 0.5]}, "augmentation.rotation": {"uniform": [0, 30]},
         "unfreeze_blocks": {"int": [1, 8]}, "epochs": {"int": [1, 3]},
         "strategy": {"choice": ["fine_tune", "gradual_unfreeze"]}, "optimizer": {"choice": ["sgd", "adamw"]},
         "attention": {"choice": ["none", "se", "cbam"]}, "augmentation.flip": {"choice": [True, False]},
         "batch_size": {"choice": [4, 8.0]}}


def sweep(space: dict, **fields) -> dict:
    return {"base": dict(BASE), "space": space, **fields}


def test_a_space_over_every_kind_parses_into_its_dimensions():
    dimensions = {d.name: d for d in parse_space(SPACE)}
    assert dimensions["lr"] == Dimension("lr", "log_uniform", 1e-4, 10.0)
    assert dimensions["unfreeze_blocks"] == Dimension("unfreeze_blocks", "int", 1, 8)
    assert dimensions["strategy"].options == ("fine_tune", "gradual_unfreeze")
    assert dimensions["batch_size"].options == (4, 8) and isinstance(dimensions["batch_size"].options[1], int)
    config = sweep_config(sweep(SPACE, trials=12, metric="val_loss"))
    assert config.trials == 12 and not config.maximize and config.base.output_model == "out"


@pytest.mark.parametrize("space, field, words", [
    ({"learning_rate": {"log_uniform": [1e-4, 1]}}, "space.learning_rate", "not a fine-tune parameter"),
    ({"dataset_id": {"choice": ["a", "b"]}}, "space.dataset_id", "not a fine-tune parameter"),
    ({"head.width": {"int": [1, 2]}}, "space.head.width", "not a fine-tune parameter"),
    ({"lr": {"log_uniform": [0, 1]}}, "space.lr", "low > 0"),
    ({"lr": {"log_uniform": [1e-3, 11]}}, "space.lr", "<= 10"),
    ({"lr": {"uniform": [0.1, 0.01]}}, "space.lr", "low < high"),
    ({"lr": {"uniform": [0.1]}}, "space.lr", "[low, high]"),
    ({"lr": {"uniform": [0.1, "x"]}}, "space.lr", "[low, high]"),
    ({"lr": {"int": [1, 2]}}, "space.lr", "use uniform or log_uniform"),
    ({"lr": {"choice": [0.1, "fast"]}}, "space.lr", "must be a float"),
    ({"lr": {"log_uniform": [1e-3, 1], "uniform": [0, 1]}}, "space.lr", "exactly one of"),
    ({"lr": {"normal": [0, 1]}}, "space.lr", "exactly one of"),
    ({"lr": [1e-3, 1]}, "space.lr", "exactly one of"),
    ({"head.dropout": {"uniform": [0, 1]}}, "space.head.dropout", "< 1"),
    ({"epochs": {"uniform": [1, 3]}}, "space.epochs", "use int"),
    ({"epochs": {"int": [0, 3]}}, "space.epochs", ">= 1"),
    ({"epochs": {"int": [1.5, 3]}}, "space.epochs", "whole numbers"),
    ({"unfreeze_blocks": {"int": [1, 10**6]}}, "space.unfreeze_blocks", "<= 1000"),
    ({"strategy": {"choice": ["fine_tune", "freeze_all"]}}, "space.strategy", "choose among"),
    ({"strategy": {"choice": []}}, "space.strategy", "1 to 32"),
    ({"optimizer": {"choice": ["sgd", "sgd"]}}, "space.optimizer", "distinct"),
    ({"batch_size": {"choice": [1, 1.0]}}, "space.batch_size", "distinct"),
    ({"head.dropout": {"choice": [0.5, 0.50]}}, "space.head.dropout", "distinct"),
    ({"attention_stride": {"choice": [8, 8.0]}}, "space.attention_stride", "distinct"),
    ({"batch_size": {"choice": [None]}}, "space.batch_size", "must be a int"),
    ({"attention": {"choice": [None]}}, "space.attention", "choose among"),
    ({"augmentation.flip": {"uniform": [0, 1]}}, "space.augmentation.flip", "use choice"),
    ({"augmentation.flip": {"choice": [1, 0]}}, "space.augmentation.flip", "true/false"),
    ({}, "space", "at least one"),
])
def test_a_bad_space_is_refused_naming_the_parameter(space, field, words):
    with pytest.raises(InvalidRequest) as refused:
        sweep_config(sweep(space))
    assert refused.value.extra["field"] == field and words in refused.value.detail, refused.value.detail


def test_the_checks_see_the_largest_batch_and_size_a_space_can_sample_and_the_smallest():
    params = sweep({"batch_size": {"int": [4, 64]}, "input_size": {"choice": [64, None, 128]},
                    "lr": {"log_uniform": [1e-4, 1]}})
    # null is the base model's size, which may be larger than any size given: both are checked
    assert checked_trials(params) == [{**BASE, "batch_size": 64, "input_size": 128},
                                      {**BASE, "batch_size": 64, "input_size": None},
                                      {**BASE, "batch_size": 4, "input_size": 64},
                                      {**BASE, "batch_size": 4, "input_size": None}]
    assert checked_trials(sweep({"input_size": {"choice": [None]}})) == [{**BASE, "input_size": None}]
    assert checked_trials(sweep({"batch_size": {"choice": [8, 2]}})) == [{**BASE, "batch_size": 8},
                                                                         {**BASE, "batch_size": 2}]
    # the bottom corner trains the backbone where the space can (one-image batches are refused only then)
    strategies = sweep({"strategy": {"choice": ["feature_extraction", "gradual_unfreeze"]}})
    assert checked_trials(strategies)[-1] == {**BASE, "strategy": "gradual_unfreeze"}
    assert with_values({"head": {"hidden": 8}}, {"head.dropout": 0.3}) == {"head": {"hidden": 8, "dropout": 0.3}}


def sampled(seed: int, trials: int = 14) -> list[dict]:
    """What a sweep's sampler draws over SPACE, trials told a value that depends on their params
    (so TPE's own phase, after its random start, is exercised too)."""
    config = sweep_config(sweep(SPACE, trials=trials, seed=seed))
    study = optuna.create_study(sampler=make_sampler(config), direction="maximize")
    dimensions = parse_space(SPACE)
    drawn = []
    for _ in range(trials):
        trial = study.ask()
        values = {dimension.name: suggest(trial, dimension) for dimension in dimensions}
        study.tell(trial, -abs(math.log10(values["lr"]) + 2) - values["head.dropout"])
        drawn.append(values)
    return drawn


def test_the_same_seed_samples_the_same_sequence_and_another_seed_does_not():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = sampled(11)
    assert first == sampled(11)
    assert first != sampled(12)
    assert all(1e-4 <= values["lr"] <= 10 and values["strategy"] in ("fine_tune", "gradual_unfreeze")
               and isinstance(values["epochs"], int) for values in first)


def test_a_trial_reports_each_epoch_and_stops_pruned_when_told():
    reports, seen = [], []
    trial = {"sweep": "s", "number": 0, "metric": "val_loss", "startup_trials": 2}

    def report_epoch(marker, epoch, value):
        reports.append((epoch, value))
        return epoch == 2

    progress = pruned_when_told(lambda fraction, **details: seen.append(details), trial, report_epoch)
    progress(0.1, epoch=1, step=1, steps=2, metrics={"train_loss": 1.0})
    progress(0.5, epoch=1, metrics={"val_loss": 0.7, "val_accuracy": 0.5})
    with pytest.raises(JobPruned):
        progress(1.0, epoch=2, metrics={"val_loss": float("nan"), "val_accuracy": 0.3})
    assert reports[0] == (1, 0.7) and reports[1][0] == 2 and math.isnan(reports[1][1])
    assert seen[-1]["metrics"]["val_loss"] is None  # JSON has no NaN
