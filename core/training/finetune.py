"""Transfer learning: replace the classifier, train it (and, by strategy, the top of the
backbone at a lower learning rate), keep the best epoch by validation accuracy."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from core.errors import InvalidRequest
from core.jobs import JobCancelled, Progress, ShouldStop
from core.models.architectures import build_network
from core.models.spec import ModelSpec
from core.training import data
from core.training.config import FineTuneConfig



@dataclass
class FineTuneResult:
    spec: ModelSpec
    network: nn.Module
    metrics: dict


def backbone_stages(network: nn.Module) -> list[list[nn.Module]]:
    """Backbone modules grouped by stage, top (nearest the classifier) first."""
    blocks = [[network.blocks[index] for index in stage] for stage in network.block_stages()]
    return [[network.head], *blocks, [network.stem]]


def trainable_backbone(network: nn.Module, config: FineTuneConfig, epoch: int) -> list[nn.Module]:
    if config.strategy == "feature_extraction" or (config.strategy == "fine_tune" and epoch == 0):
        return []
    if config.strategy == "fine_tune":
        return [network.head, *list(network.blocks)[-config.unfreeze_blocks:]]
    return [module for stage in backbone_stages(network)[:epoch] for module in stage]


def head_modules(network: nn.Module) -> list[nn.Module]:
    return [network.hidden, network.classifier, network.attention]


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
    """Copy every pretrained weight except the classifier's (the class set changed)."""
    state = {key: value for key, value in source.state_dict().items()
             if not key.startswith(("classifier.", "hidden.", "attention."))}
    _, unexpected = target.load_state_dict(state, strict=False)
    assert not unexpected, unexpected


def evaluate(network: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, normalize: data.Normalizer,
             num_classes: int, batch_size: int, device: torch.device) -> dict:
    network.eval()
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.long)
    total_loss = 0.0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            inputs = normalize(pixels[start:start + batch_size]).to(device)
            truth = labels[start:start + batch_size]
            logits = network(inputs).float().cpu()
            total_loss += nn.functional.cross_entropy(logits, truth, reduction="sum").item()
            for actual, predicted in zip(truth.tolist(), logits.argmax(dim=1).tolist()):
                confusion[actual, predicted] += 1
    per_class = (confusion.diag().float() / confusion.sum(dim=1).clamp(min=1).float()).tolist()
    return {"loss": total_loss / max(len(labels), 1),
            "accuracy": confusion.diag().sum().item() / max(len(labels), 1),
            "per_class_accuracy": per_class, "confusion_matrix": confusion.tolist()}


def fine_tune(config: FineTuneConfig, base_spec: ModelSpec, base_network: nn.Module, classes: list[str],
              items: list, progress: Progress, should_stop: ShouldStop, device: torch.device,
              max_pixels: int = 40_000_000) -> FineTuneResult:
    """Train a copy of `base_network` (new classifier, optional attention modules, which train
    with the head) for `classes`. Raises JobCancelled when should_stop() says so between steps."""
    torch.manual_seed(config.seed)
    input_size = config.input_size or base_spec.input_size
    network = build_network(base_spec.architecture, len(classes), input_size, config.head_hidden,
                            config.head_dropout, config.attention, config.attention_stages)
    transfer_backbone(base_network, network)
    network.to(device)
    spec = replace(base_spec, id=config.output_model, version=0, labels=tuple(classes), input_size=input_size,
                   head_hidden=config.head_hidden, dropout=config.head_dropout, weights_digest="",
                   attention_type=config.attention, attention_stages=config.attention_stages,
                   cam_layer=network.cam_layer, base_model=base_spec.ref,
                   description=f"{base_spec.id} fine-tuned ({config.strategy}) on data set {config.dataset_id}")

    train_items, val_items = data.stratified_split(items, config.val_fraction, config.seed)
    progress(0.0, phase="loading images", images=len(items))
    train_pixels, train_labels = data.load_squares(train_items, spec, max_pixels)
    val_pixels, val_labels = data.load_squares(val_items, spec, max_pixels)
    normalize = data.Normalizer(spec)
    generator = torch.Generator().manual_seed(config.seed)

    optimizer = make_optimizer(config, network)
    steps_per_epoch = -(-len(train_labels) // config.batch_size)
    history: list[dict] = []
    best: dict | None = None
    best_state = None
    stale_epochs = 0
    train_seconds = 0.0
    trained_images = 0
    for epoch in range(config.epochs):
        set_trainable(network, head_modules(network) + trainable_backbone(network, config, epoch))
        seen, correct, loss_sum = 0, 0, 0.0
        epoch_started = time.perf_counter()
        for step, indices in enumerate(data.batches(len(train_labels), config.batch_size, True, generator)):
            if should_stop():
                raise JobCancelled()
            inputs = normalize(data.augment_batch(train_pixels[indices], config.augmentation, input_size,
                                                  generator)).to(device)
            truth = train_labels[indices].to(device)
            logits = network(inputs)
            loss = nn.functional.cross_entropy(logits, truth)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(indices)
            correct += (logits.argmax(dim=1) == truth).sum().item()
            loss_sum += loss.item() * len(indices)
            progress((epoch + (step + 1) / steps_per_epoch) / config.epochs, epoch=epoch + 1, step=step + 1,
                     steps=steps_per_epoch, metrics={"train_loss": loss_sum / seen, "train_accuracy": correct / seen})
        epoch_seconds = time.perf_counter() - epoch_started
        train_seconds += epoch_seconds
        trained_images += seen
        validation = evaluate(network, val_pixels, val_labels, normalize, len(classes), config.batch_size, device)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                  "val_loss": validation["loss"], "val_accuracy": validation["accuracy"],
                  "images_per_second": seen / epoch_seconds}
        history.append(record)
        progress((epoch + 1) / config.epochs, epoch=epoch + 1, metrics=record)
        if best is None or validation["accuracy"] > best["accuracy"]:
            best, best_state, stale_epochs = {**validation, "epoch": epoch + 1}, copy.deepcopy(network.state_dict()), 0
        else:
            stale_epochs += 1
            if stale_epochs >= config.early_stopping_patience:
                break
    network.load_state_dict(best_state)
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    metrics = {"history": history, "best_epoch": best["epoch"], "val_accuracy": best["accuracy"],
               "val_loss": best["loss"], "per_class_accuracy": dict(zip(classes, best["per_class_accuracy"])),
               "confusion_matrix": best["confusion_matrix"], "classes": classes,
               "train_images": len(train_labels), "val_images": len(val_labels),
               "train_images_per_second": trained_images / train_seconds if train_seconds else None,
               "stopped_early": len(history) < config.epochs}
    return FineTuneResult(spec, network.cpu(), metrics)
