"""What a training job costs, estimated before it is queued, in the explain budget's unit:
forwards of EfficientNet-Lite0 at 224 (flops.relative_cost), a backward counting as one, as it
does for an explanation. One job is held to GAZER_MAX_JOB_COST: a fine-tune of 5,000 images at
1024 px for 500 epochs, or an activation maximization of 64 classes for 10,000 steps, was
accepted and would have held a worker for days, then failed at its time limit with nothing kept."""

from __future__ import annotations

import math

from core.errors import InvalidRequest
from core.training.config import FineTuneConfig
from core.training.lr_finder import steps_for
from core.visualize.config import MaximizationConfig

FORWARD_AND_BACKWARD = 2


def fine_tune_cost(config: FineTuneConfig, images: int, forward_cost: float) -> int:
    """At most: every epoch a forward and backward of every image (the validation images have a
    forward alone), the learning-rate test's steps where `lr` is "auto", and the report's forward
    and backward of each validation image. `forward_cost`: one forward at the job's input size."""
    batches = math.ceil(images / config.batch_size)
    lr_test = steps_for(batches) * config.batch_size if config.lr == "auto" else 0
    return math.ceil(FORWARD_AND_BACKWARD * forward_cost * (config.epochs * images + lr_test + images))


def maximization_cost(config: MaximizationConfig, forward_cost: float) -> int:
    """A forward and backward of each target's image each step. `forward_cost`: one forward at
    the job's image size."""
    return math.ceil(FORWARD_AND_BACKWARD * forward_cost * config.steps * config.count)


def check_job_cost(cost: int, budget: int, what: str, field: str) -> None:
    """A 422 that gives the cost and the budget where `cost` is over it."""
    if cost > budget:
        raise InvalidRequest(f"{what} costs about {cost} forward passes (of efficientnet_lite0 at 224, a backward "
                             f"counting as one); one job may cost {budget} (GAZER_MAX_JOB_COST)", field=field,
                             cost=cost, budget=budget)
