"""The one training loop of the vision stages: seeded mini-batch SGD with momentum, and accuracy.

Pretraining, the TinyTL modes, contribution analysis and the sparse schemes all train through
``fit``; what is trained is decided beforehand by ``requires_grad`` (see ``transfer.apply_mode``).
Batch norm layers marked ``bn_frozen`` stay in inference mode while the rest of the net trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from analysis.edge.data import ImageSet
from analysis.edge.layers import ConvBN

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """SGD with a cosine schedule; one class for the sections edge.pretrain, edge.transfer and
    edge.compression's fine-tuning, whose defaults differ: build it with
    ``config.settings_from(TrainSettings, section)`` (``config.schema_defaults("edge.transfer")``
    without a config)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    seed: int = 0


def set_training(net: nn.Module, training: bool = True) -> nn.Module:
    """``net.train(training)``, keeping frozen batch norms on their running statistics."""
    net.train(training)
    for module in net.modules():
        if isinstance(module, ConvBN) and module.bn is not None and module.bn_frozen:
            module.bn.eval()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and getattr(module, "frozen", False):
            module.eval()
    return net


def trainable(net: nn.Module) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


def fit(net: nn.Module, data: ImageSet, settings: TrainSettings, validation: ImageSet | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[dict]:
    """Train ``net``'s trainable parameters on ``data``; one record per epoch (loss, accuracies).

    ``loss_fn(logits, index)`` replaces the cross-entropy (``index``: the batch's positions in
    ``data``), e.g. a distillation loss against precomputed teacher outputs.
    """
    params = trainable(net)
    if not params:
        raise ValueError("nothing to train: no parameter requires a gradient")
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    steps = settings.epochs * -(-len(data.labels) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    generator = torch.Generator().manual_seed(settings.seed)
    history = []
    for epoch in range(settings.epochs):
        set_training(net, True)
        order = torch.randperm(len(data.labels), generator=generator)
        total, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), settings.batch_size):
            index = order[start:start + settings.batch_size]
            x, y = data.images[index], data.labels[index]
            logits = net(x)
            loss = loss_fn(logits, index) if loss_fn is not None else F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(index)
        record = {"epoch": epoch + 1, "train_loss": total / seen, "train_accuracy": correct / seen}
        if validation is not None:
            record.update({f"validation_{k}": v for k, v in evaluate(net, validation).items()})
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
        history.append(record)
    set_training(net, False)
    return history


@torch.no_grad()
def evaluate(net: nn.Module, data: ImageSet, batch_size: int = 256) -> dict:
    """Accuracy (fraction) and mean cross-entropy (nats) on ``data``, in inference mode."""
    was_training = net.training
    set_training(net, False)
    loss, correct = 0.0, 0
    for start in range(0, len(data.labels), batch_size):
        x, y = data.images[start:start + batch_size], data.labels[start:start + batch_size]
        logits = net(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    set_training(net, was_training)
    n = max(1, len(data.labels))
    return {"accuracy": correct / n, "loss": loss / n}
