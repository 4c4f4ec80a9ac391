"""What a fine-tuning run is asked to do: every name, default and bound, once (the wire model
in schemas/jobs.py is generated from these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from core.names import ATTENTION_KINDS, DEFAULT_MODEL
from core.params import param

Strategy = Literal["feature_extraction", "fine_tune", "gradual_unfreeze"]
Optimizer = Literal["sgd", "adam", "adamw"]
AttentionType = Literal[("none", *ATTENTION_KINDS)]  # type: ignore[valid-type]
AttentionGate = Literal["residual", "sigmoid"]  # core.attention.GATE_FORMS
AttentionStride = Literal[8, 16, 32]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)


@dataclass(frozen=True)
class Augmentation:
    flip: bool = param(True, doc="random horizontal flips")
    rotation: float = param(10.0, ge=0, le=180, doc="degrees, +-")
    zoom: float = param(0.1, ge=0, lt=1, doc="scale in [1 - zoom, 1 + zoom]")
    shear: float = param(5.0, ge=0, le=45, doc="degrees, +-")
    color_jitter: float = param(0.1, ge=0, le=1, doc="brightness, contrast, saturation, +-")


@dataclass(frozen=True)
class Head:
    hidden: int = param(0, ge=0, le=4096, doc="hidden units before the classifier; 0 = linear head")
    dropout: float = param(0.2, ge=0, lt=1, doc="dropout before the classifier")


@dataclass(frozen=True)
class FineTuneConfig:
    dataset_id: str = param(max_length=64, doc="a data set uploaded to /v1/datasets")
    output_model: str = param(doc="name of the new model; each run adds a version")
    base_model: str = param(DEFAULT_MODEL, doc="the model to start from: NAME or NAME@VERSION")
    strategy: Strategy = param("fine_tune", doc="feature_extraction: the head only; fine_tune: the head, then "
                                                "the top unfreeze_blocks blocks from epoch 2; gradual_unfreeze: "
                                                "one more stage each epoch (stages: blocks of one resolution; "
                                                "pretrained layers between the last feature map and the "
                                                "classifier, as VGG's, come first)")
    epochs: int = param(5, ge=1, le=500)
    batch_size: int = param(16, ge=1, le=512)
    optimizer: Optimizer = param("adamw")
    lr: float | Literal["auto"] = param(1e-3, gt=0, le=10, doc="learning rate of the head (and attention modules); "
                                                                  '"auto": a learning-rate range test picks it')
    backbone_lr: float = param(1e-4, ge=0, le=10, doc="learning rate of unfrozen pretrained layers")
    weight_decay: float = param(1e-4, ge=0, le=1)
    head: Head = param(factory=Head)
    augmentation: Augmentation = param(factory=Augmentation)
    input_size: int | None = param(None, ge=32, le=1024, doc="train and serve at this size; default the base "
                                                              "model's")
    val_fraction: float = param(0.2, gt=0, lt=1)
    early_stopping_patience: int = param(3, ge=1, le=500, doc="epochs without a better validation accuracy")
    seed: int = param(0, ge=0, le=2**32 - 1)
    bfloat16: bool = param(False, doc="on a GPU, train in bfloat16 autocast (weights stay float32); "
                                      "ignored on the CPU")
    unfreeze_blocks: int = param(6, ge=1, le=1000, doc="fine_tune: top backbone blocks unfrozen after epoch 1 "
                                                       "(EfficientNet-Lite's last conv counts as one, and so does "
                                                       "each layer with weights between the last feature map and "
                                                       "the classifier, as VGG's linear layers)")
    attention: AttentionType = param("none", doc="attention modules to add; they train with the head")
    attention_stages: int = param(1, ge=1, le=7, doc="after the last feature stage, or after each of the top N "
                                                     "(of those at attention_stride, when given)")
    attention_gate: AttentionGate = param("residual", doc="residual: x * (1 + tanh(z)), starting as the identity "
                                                          "(a new module leaves the pretrained outputs unchanged); "
                                                          "sigmoid: x * sigmoid(z), the papers' form")
    attention_stride: AttentionStride | None = param(None, doc="only after stages whose feature map is the input "
                                                               "side / this (16: the 14x14 stages at 224 px); "
                                                               "default the top stages")
