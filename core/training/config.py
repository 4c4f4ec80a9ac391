"""What a fine-tuning run is asked to do."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.attention import ATTENTION_KINDS

STRATEGIES = ("feature_extraction", "fine_tune", "gradual_unfreeze")
OPTIMIZERS = ("sgd", "adam", "adamw")
ATTENTION_TYPES = ("none", *ATTENTION_KINDS)


@dataclass(frozen=True)
class Augmentation:
    flip: bool = True
    rotation: float = 10.0       # degrees, +-
    zoom: float = 0.1            # scale in [1 - zoom, 1 + zoom]
    shear: float = 5.0           # degrees, +-
    color_jitter: float = 0.1    # brightness, contrast and saturation, +-


@dataclass(frozen=True)
class FineTuneConfig:
    base_model: str
    dataset_id: str
    output_model: str
    strategy: str = "fine_tune"
    epochs: int = 5
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-3
    backbone_lr: float = 1e-4
    weight_decay: float = 1e-4
    head_hidden: int = 0
    head_dropout: float = 0.2
    augmentation: Augmentation = field(default_factory=Augmentation)
    input_size: int | None = None
    val_fraction: float = 0.2
    early_stopping_patience: int = 3
    seed: int = 0
    unfreeze_blocks: int = 5     # fine_tune: how many top blocks train at backbone_lr after epoch 1
    attention: str = "none"
    attention_stages: int = 1    # after the last feature stage, or after each of the top N stages
