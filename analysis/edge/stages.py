"""The vision edge-training stages as the rules call them: one function per rule, config in, files out.

``edge`` is the validated ``edge`` section of the config (see the schema for every key). The source
task pretrains the net; the target task's training split loses ``validation_fraction`` of its
images (seeded) to a validation split, used by the contribution analysis only; every mode and
scheme trains on the rest and is scored on the target's test split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from analysis.edge import nets
from analysis.edge.data import ImageSet, Task, load_task
from analysis.edge.sparse import SparseSettings, contributions, search
from analysis.edge.train import TrainSettings, evaluate, fit
from analysis.edge.transfer import apply_mode, apply_sparse, memory_report
from analysis.errors import PipelineError
from analysis.io import write_json
from analysis.selection.search import SparseScheme

log = logging.getLogger(__name__)
KIB = 1024


def task(edge: dict, which: str, seed: int) -> Task:
    return load_task(edge[which], image_size=edge["image_size"], channels=edge["channels"], seed=seed,
                     name=f"edge.{which}")


def split_validation(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded ``fraction`` of ``data`` as validation, the rest for training."""
    order = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * len(order)))
    if n_val >= len(order):
        raise PipelineError(f"edge.validation_fraction = {fraction} leaves no training images")
    pick = lambda index: ImageSet(data.images[index], data.labels[index], data.classes)  # noqa: E731
    return pick(order[n_val:].sort().values), pick(order[:n_val].sort().values)


def _settings(section: dict, seed: int) -> TrainSettings:
    return TrainSettings(epochs=section["epochs"], batch_size=section["batch_size"], lr=section["lr"],
                         momentum=section["momentum"], weight_decay=section["weight_decay"], seed=seed)


def _image_shape(edge: dict) -> tuple[int, int, int]:
    return edge["channels"], edge["image_size"], edge["image_size"]


def _memory(make, edge: dict, num_classes: int) -> dict:
    """Memory reports at each configured batch size, with stock PyTorch's measured bytes beside them.

    ``make(frugal)`` builds the frozen net from frugal or from stock PyTorch layers; the weights do
    not matter for memory, so both are built from the source net before training.
    """
    reports = {}
    net, stock_net = make(None), make(False)
    for batch in edge["transfer"]["memory_batch_sizes"]:
        report = memory_report(net, batch, _image_shape(edge), num_classes)
        stock = memory_report(stock_net, batch, _image_shape(edge), num_classes)
        report["stock_measured_saved_bytes"] = stock["measured_saved_bytes"]
        for row, twin in zip(report["layers"], stock["layers"]):
            row["stock_measured_bytes"] = twin["measured_bytes"]
        reports[str(batch)] = report
    return reports


def pretrain(edge: dict, seed: int, net_path: str | Path, metrics_path: str | Path) -> dict:
    """Train the source net on the source task; save it and its test accuracy."""
    start = time.perf_counter()
    source = task(edge, "source", seed)
    torch.manual_seed(seed)
    net = nets.build("mobilenet", in_channels=edge["channels"], num_classes=len(source.train.classes),
                     **{k: v for k, v in edge["net"].items() if k != "kind"})
    history = fit(net, source.train, _settings(edge["pretrain"], seed))
    result = {"task": {"classes": source.train.classes, "train_images": len(source.train.labels),
                       "test_images": len(source.test.labels)},
              "parameters": sum(p.numel() for p in net.parameters()),
              "test": evaluate(net, source.test), "history": history,
              "seconds": time.perf_counter() - start}
    nets.save(net, net_path)
    write_json(metrics_path, result)
    log.info("source net: %d parameters, test accuracy %.4f", result["parameters"], result["test"]["accuracy"])
    return result


def _target(edge: dict, seed: int) -> tuple[ImageSet, ImageSet, ImageSet]:
    target = task(edge, "target", seed)
    train, validation = split_validation(target.train, edge["validation_fraction"], seed)
    return train, validation, target.test


def transfer(edge: dict, seed: int, source_path: str | Path, mode: str, out: str | Path) -> dict:
    """Adapt the source net to the target task in one TinyTL mode; accuracy, curve and memory."""
    start = time.perf_counter()
    train, _, test = _target(edge, seed)
    def make(frugal: bool | None):
        overrides = {} if frugal is None else {"frugal": frugal}
        return apply_mode(nets.load(source_path, **overrides), mode, len(train.classes), seed=seed,
                          lite_group_size=edge["transfer"]["lite_group_size"])

    net = make(None)
    memory = _memory(make, edge, len(train.classes))
    history = fit(net, train, _settings(edge["transfer"], seed))
    result = {"mode": mode, "test": evaluate(net, test), "history": history,
              "trained_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
              "parameters": sum(p.numel() for p in net.parameters()),
              "frugal_layers": net.config["frugal"], "memory": memory,
              "seconds": time.perf_counter() - start}
    write_json(out, result)
    log.info("mode %s: test accuracy %.4f", mode, result["test"]["accuracy"])
    return result


def sparse_settings(edge: dict, seed: int) -> SparseSettings:
    section = edge["sparse"]
    return SparseSettings(ratios=section["ratios"], layers=section["layers"], unit_epochs=section["unit_epochs"],
                          gain=section["gain"], batch_size=section["batch_size"], population=section["population"],
                          generations=section["generations"], seed=seed,
                          train=_settings(edge["transfer"], seed))


def contribution_stage(edge: dict, seed: int, source_path: str | Path, out: str | Path) -> dict:
    start = time.perf_counter()
    train, validation, _ = _target(edge, seed)
    result = contributions(nets.load(source_path), train, validation, sparse_settings(edge, seed))
    result["seconds"] = time.perf_counter() - start
    write_json(out, result)
    return result


def sparse_stage(edge: dict, seed: int, source_path: str | Path, contributions_blob: dict, budget_kib: float,
                 out: str | Path) -> dict:
    """Search the scheme with the largest summed gain under ``budget_kib`` KiB of extra memory; train it."""
    settings = sparse_settings(edge, seed)
    train, _, test = _target(edge, seed)
    start = time.perf_counter()
    found = search(nets.load(source_path), contributions_blob, int(budget_kib * KIB), len(train.classes), _image_shape(edge),
                   settings)
    search_seconds = time.perf_counter() - start
    scheme = SparseScheme.make(found["scheme"]["n_bias_update"], found["scheme"]["weight_update"])
    def make(frugal: bool | None):
        overrides = {} if frugal is None else {"frugal": frugal}
        return apply_sparse(nets.load(source_path, **overrides), scheme, len(train.classes), seed=seed)

    net = make(None)
    memory = _memory(make, edge, len(train.classes))
    history = fit(net, train, settings.train)
    result = {"budget_kib": budget_kib, "scheme": found["scheme"], "estimated_gain": found["estimated_gain"],
              "search": {k: found[k] for k in ("memory_bytes", "budget_bytes", "cheapest", "history")},
              "search_seconds": search_seconds, "test": evaluate(net, test), "history": history,
              "trained_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
              "memory": memory, "seconds": time.perf_counter() - start}
    write_json(out, result)
    log.info("budget %s KiB: scheme %s, test accuracy %.4f", budget_kib, found["scheme"], result["test"]["accuracy"])
    return result
