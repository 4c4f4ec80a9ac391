"""Transfer learning: replace the classifier, train it (and, by strategy, the top of the
backbone at a lower learning rate), keep the best epoch by validation accuracy."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
from torch import nn

from core.errors import InvalidRequest
from core.jobs import JobCancelled, Progress, ShouldStop, share_of
from core.models.anatomy import first_with_parameters
from core.models.architectures import build_network
from core.models.layers import feeds_a_linear_head
from core.models.spec import ModelSpec
from core.runtime.devices import fast_layout, fast_math
from core.training import data
from core.training.config import FineTuneConfig
from core.training.lr_finder import START_LR, LrCurve, lr_range_test, steps_for


@dataclass
class FineTuneResult:
    spec: ModelSpec
    network: nn.Module
    metrics: dict


def trainable_backbone(network: nn.Module, config: FineTuneConfig, epoch: int) -> list[nn.Module]:
    """The backbone modules that train in this epoch (0-based), besides the head: none for
    feature extraction; the top `unfreeze_blocks` blocks that hold parameters from the second
    epoch on for fine_tune; one more stage each epoch for gradual_unfreeze."""
    if config.strategy == "feature_extraction" or (config.strategy == "fine_tune" and epoch == 0):
        return []
    if config.strategy == "fine_tune":  # with the activations and dropouts among them
        blocks = network.anatomy.blocks
        names = blocks[first_with_parameters([network.get_submodule(name) for name in blocks], config.unfreeze_blocks):]
    else:
        names = [name for stage in network.anatomy.stages[:epoch] for name in stage]
    return [network.get_submodule(name) for name in names]


def head_modules(network: nn.Module) -> list[nn.Module]:
    """What is new in a fine-tuned network: the classifier (and a hidden layer before it) and
    the attention modules."""
    return [network.get_submodule(name) for name in network.anatomy.head_layers]


def set_trainable(network: nn.Module, trainable: list[nn.Module]) -> None:
    """Frozen parts get no gradients and keep their BatchNorm statistics (eval mode)."""
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    for module in trainable:
        module.train()
        for parameter in module.parameters():
            parameter.requires_grad_(True)


def make_optimizer(config: FineTuneConfig, network: nn.Module) -> torch.optim.Optimizer:
    head_ids = {id(p) for module in head_modules(network) for p in module.parameters()}
    head = [p for p in network.parameters() if id(p) in head_ids]
    backbone = [p for p in network.parameters() if id(p) not in head_ids]
    groups = [{"params": head, "lr": config.lr}, {"params": backbone, "lr": config.backbone_lr}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    raise InvalidRequest(f"unknown optimizer {config.optimizer!r}", field="optimizer")


def transfer_backbone(source: nn.Module, target: nn.Module) -> None:
    """Copy every pretrained weight except the head's (the class set changed)."""
    new = tuple(name + "." for name in target.anatomy.head_layers)
    state = {key: value for key, value in source.state_dict().items() if not key.startswith(new)}
    _, unexpected = target.load_state_dict(state, strict=False)
    assert not unexpected, unexpected


def evaluate(network: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, normalize: data.Normalizer,
             num_classes: int, batch_size: int, device: torch.device, should_stop: ShouldStop) -> dict:
    """Loss, accuracy and confusion over the validation images; JobCancelled when should_stop()
    says so between batches (190 images at 1024 px took 236 s: a cancel, the job's time limit or a
    worker's stop waited for all of them, and a stop killed the worker, losing its job)."""
    network.eval()
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.long)
    total_loss = 0.0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            if should_stop():
                raise JobCancelled()
            inputs = normalize(pixels[start:start + batch_size].to(device))
            truth = labels[start:start + batch_size]
            logits = network(inputs).float().cpu()
            total_loss += nn.functional.cross_entropy(logits, truth, reduction="sum").item()
            for actual, predicted in zip(truth.tolist(), logits.argmax(dim=1).tolist()):
                confusion[actual, predicted] += 1
    counts = confusion.sum(dim=1)  # a class with no validation image has no accuracy: None
    per_class = [correct / count if count else None for correct, count in zip(confusion.diag().tolist(), counts.tolist())]
    return {"loss": total_loss / max(len(labels), 1),
            "accuracy": confusion.diag().sum().item() / max(len(labels), 1),
            "per_class_accuracy": per_class, "confusion_matrix": confusion.tolist()}


def new_network(config: FineTuneConfig, base_spec: ModelSpec, base_network: nn.Module,
                classes: list[str]) -> tuple[ModelSpec, nn.Module]:
    """The base network with a new head for `classes` (and attention modules), and its spec."""
    input_size = config.input_size or base_spec.input_size
    network = build_network(base_spec.architecture, len(classes), input_size, config.head.hidden,
                            config.head.dropout, config.attention, config.attention_stages,
                            attention_gate=config.attention_gate, attention_stride=config.attention_stride)
    anatomy = network.anatomy
    spec = replace(base_spec, id=config.output_model, version=0, labels=tuple(classes), input_size=input_size,
                   head_hidden=config.head.hidden, dropout=config.head.dropout, weights_digest="",
                   attention_type=config.attention, attention_stages=config.attention_stages,
                   attention_gate=config.attention_gate, attention_stride=config.attention_stride,
                   cam_layer=anatomy.cam_layer, classifier_layer=anatomy.classifier_layer,
                   linear_head=feeds_a_linear_head(network, anatomy.cam_layer, anatomy.classifier_layer, input_size),
                   base_model=base_spec.ref,
                   description=f"{base_spec.id} fine-tuned ({config.strategy}) on data set {config.dataset_id}")
    transfer_backbone(base_network, network)
    return spec, network


@dataclass
class _Data:
    train_pixels: torch.Tensor   # uint8 squares, (N, 3, S, S)
    train_labels: torch.Tensor
    val_pixels: torch.Tensor
    val_labels: torch.Tensor


def load_data(config: FineTuneConfig, spec: ModelSpec, items: list, max_pixels: int, progress: Progress,
              should_stop: ShouldStop) -> _Data:
    train_items, val_items = data.stratified_split(items, config.val_fraction, config.seed)

    def loaded(before: int) -> Callable[[int], None]:
        return lambda count: progress(0.0, phase="loading images", images=before + count, total=len(items))

    progress(0.0, phase="loading images", images=0, total=len(items))
    return _Data(*data.load_squares(train_items, spec, max_pixels, should_stop, loaded(0)),
                 *data.load_squares(val_items, spec, max_pixels, should_stop, loaded(len(train_items))))


@dataclass
class _Epoch:
    images: int
    correct: int
    loss_sum: float
    seconds: float


def batches_per_epoch(split: _Data, config: FineTuneConfig) -> int:
    return data.batch_count(len(split.train_labels), config.batch_size)


def lr_test_steps(split: _Data, config: FineTuneConfig) -> int:
    return steps_for(batches_per_epoch(split, config))


def train_epoch(network: nn.Module, optimizer: torch.optim.Optimizer, split: _Data, config: FineTuneConfig,
                spec: ModelSpec, generator: torch.Generator, device: torch.device,
                report: Callable[[int, int, dict], None], should_stop: ShouldStop) -> _Epoch:
    """One pass over the training images, augmented; `report(step, steps, metrics)` after each step."""
    normalize = data.Normalizer(spec)
    steps = batches_per_epoch(split, config)
    epoch = _Epoch(0, 0, 0.0, 0.0)
    started = time.perf_counter()
    for step, indices in enumerate(data.batches(len(split.train_labels), config.batch_size, True, generator)):
        if should_stop():
            raise JobCancelled()
        # uint8 to the model's device, augmented there: a GPU does not wait on the CPU's resampling
        squares = split.train_pixels[indices].to(device)
        inputs = fast_layout(normalize(data.augment_batch(squares, config.augmentation, spec.input_size, generator)))
        truth = split.train_labels[indices].to(device)
        with fast_math(device, config.bfloat16):
            logits = network(inputs)
            loss = nn.functional.cross_entropy(logits, truth)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        epoch.images += len(indices)
        epoch.correct += (logits.argmax(dim=1) == truth).sum().item()
        epoch.loss_sum += loss.item() * len(indices)
        report(step + 1, steps, {"train_loss": epoch.loss_sum / epoch.images,
                                 "train_accuracy": epoch.correct / epoch.images})
    epoch.seconds = time.perf_counter() - started
    return epoch


def find_lr(network: nn.Module, config: FineTuneConfig, spec: ModelSpec, split: _Data, generator: torch.Generator,
            device: torch.device, should_stop: ShouldStop, progress: Progress) -> LrCurve:
    """`lr: "auto"`: the learning-rate range test over the first epoch's trainable part, on
    augmented training batches (cycled: a small data set has fewer than its steps)."""
    set_trainable(network, head_modules(network) + trainable_backbone(network, config, 0))
    optimizer = make_optimizer(replace(config, lr=START_LR), network)
    normalize = data.Normalizer(spec)

    def cycled() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            for indices in data.batches(len(split.train_labels), config.batch_size, True, generator):
                squares = data.augment_batch(split.train_pixels[indices].to(device), config.augmentation,
                                             spec.input_size, generator)
                yield normalize(squares), split.train_labels[indices].to(device)

    return lr_range_test(network, optimizer, cycled(), should_stop, steps=lr_test_steps(split, config),
                         step_report=lambda step, steps: progress(step / steps, phase="lr range test", step=step,
                                                                  steps=steps))


class BestEpoch:
    """The epoch with the best validation accuracy so far (its weights kept), and whether
    `patience` epochs have passed without a better one."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.validation: dict | None = None
        self.state: dict | None = None
        self.stale_epochs = 0

    def update(self, validation: dict, epoch: int, network: nn.Module) -> bool:
        """Record an epoch's validation; True when training should stop early."""
        if self.validation is None or validation["accuracy"] > self.validation["accuracy"]:
            self.validation, self.state, self.stale_epochs = {**validation, "epoch": epoch}, \
                copy.deepcopy(network.state_dict()), 0
            return False
        self.stale_epochs += 1
        return self.stale_epochs >= self.patience


def fine_tune(config: FineTuneConfig, base_spec: ModelSpec, base_network: nn.Module, classes: list[str],
              items: list, progress: Progress, should_stop: ShouldStop, device: torch.device,
              max_pixels: int) -> FineTuneResult:
    """Train a copy of `base_network` (new classifier, optional attention modules, which train
    with the head) for `classes`, keeping the epoch with the best validation accuracy. Raises
    JobCancelled when should_stop() says so between steps. Seeded by `config.seed`: the new
    layers' initial weights and dropout draw from torch's global generator inside a fork of it,
    so the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        spec, network = new_network(config, base_spec, base_network, classes)
        fast_layout(network.to(device))
        split = load_data(config, spec, items, max_pixels, progress, should_stop)
        generator = torch.Generator().manual_seed(config.seed)
        lr_curve = None
        if config.lr == "auto":  # its share of the progress: its steps' share of all the training steps
            testing = lr_test_steps(split, config)
            share = testing / (testing + config.epochs * batches_per_epoch(split, config))
            lr_curve = find_lr(network, config, spec, split, generator, device, should_stop,
                               share_of(progress, 0.0, share))
            progress = share_of(progress, share, 1.0)
            config = replace(config, lr=lr_curve.chosen)
        optimizer = make_optimizer(config, network)
        history: list[dict] = []
        epochs: list[_Epoch] = []
        best = BestEpoch(config.early_stopping_patience)
        for epoch in range(config.epochs):
            set_trainable(network, head_modules(network) + trainable_backbone(network, config, epoch))

            def report(step: int, steps: int, metrics: dict, epoch: int = epoch) -> None:
                progress((epoch + step / steps) / config.epochs, epoch=epoch + 1, step=step, steps=steps,
                         metrics=metrics)

            done = train_epoch(network, optimizer, split, config, spec, generator, device, report, should_stop)
            validation = evaluate(network, split.val_pixels, split.val_labels, data.Normalizer(spec),
                                  len(classes), config.batch_size, device, should_stop)
            epochs.append(done)
            history.append({"epoch": epoch + 1, "train_loss": done.loss_sum / done.images,
                            "train_accuracy": done.correct / done.images, "val_loss": validation["loss"],
                            "val_accuracy": validation["accuracy"], "images_per_second": done.images / done.seconds})
            progress((epoch + 1) / config.epochs, epoch=epoch + 1, metrics=history[-1])
            if best.update(validation, epoch + 1, network):
                break
    network.load_state_dict(best.state)
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    network = network.cpu().to(memory_format=torch.contiguous_format)  # safetensors saves contiguous tensors only
    metrics = _metrics(history, epochs, best.validation, classes, split, config)
    if lr_curve is not None:
        metrics["lr_finder"] = lr_curve.as_dict()
    return FineTuneResult(spec, network, metrics)


def _metrics(history: list[dict], epochs: list[_Epoch], best: dict, classes: list[str], split: _Data,
             config: FineTuneConfig) -> dict:
    seconds = sum(epoch.seconds for epoch in epochs)
    return {"history": history, "best_epoch": best["epoch"], "val_accuracy": best["accuracy"],
            "val_loss": best["loss"], "per_class_accuracy": dict(zip(classes, best["per_class_accuracy"])),
            "confusion_matrix": best["confusion_matrix"], "classes": classes,
            "train_images": len(split.train_labels), "val_images": len(split.val_labels),
            "train_images_per_second": sum(epoch.images for epoch in epochs) / seconds if seconds else None,
            "stopped_early": len(history) < config.epochs}
