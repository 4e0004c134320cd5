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
from typing import Mapping

import numpy as np
import torch

from analysis.config import settings_from
from analysis.edge import compression, leakage, nets
from analysis.edge.data import ImageSet, Task, load_task
from analysis.edge.federated import FederatedSettings, federated_averaging
from analysis.edge.names import COMPRESSIONS
from analysis.edge.sparse import SparseSettings, contributions, search
from analysis.edge.train import TrainSettings, evaluate, fit
from analysis.edge.transfer import apply_mode, apply_sparse, memory_report
from analysis.errors import PipelineError
from analysis.io import atomic_path, write_json
from analysis.selection.search import SparseScheme

log = logging.getLogger(__name__)
KIB = 1024


def task(edge: dict, which: str, seed: int) -> Task:
    """The task at ``edge[which]`` (``"source"``, ``"target"``, ``"federated.task"``, ``"leakage.task"``)."""
    spec = edge
    for key in which.split("."):
        spec = spec[key]
    return load_task(spec, image_size=edge["image_size"], channels=edge["channels"], seed=seed, name=f"edge.{which}")


def split_validation(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded ``fraction`` of ``data`` as validation, the rest for training."""
    order = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * len(order)))
    if n_val >= len(order):
        raise PipelineError(f"edge.validation_fraction = {fraction} leaves no training images")
    pick = lambda index: ImageSet(data.images[index], data.labels[index], data.classes)  # noqa: E731
    return pick(order[n_val:].sort().values), pick(order[:n_val].sort().values)


def _settings(section: dict, seed: int) -> TrainSettings:
    return settings_from(TrainSettings, section, seed=seed)


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


def transfer_stage(edge: dict, seed: int, source_path: str | Path, outputs: Mapping[str, str | Path]) -> dict:
    """Rule edge_transfer: every mode of ``outputs`` (mode -> its JSON) in turn, in one process.

    Each mode seeds what it draws, so its result does not depend on the modes run before it. One job
    for all modes: a job per mode spent about 6 of its 9-15 s starting Python and importing
    (``benchmarks/demo_profile.py``), and the modes are in the job's params, so changing one reran
    all of them anyway."""
    return {mode: transfer(edge, seed, source_path, mode, out) for mode, out in outputs.items()}


def sparse_settings(edge: dict, seed: int) -> SparseSettings:
    section = edge["sparse"]
    return settings_from(SparseSettings, section, seed=seed, train=_settings(edge["transfer"], seed))


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


def federated_stage(edge: dict, seed: int, scheme: str, out: str | Path, threads: int = 1) -> dict:
    """FedAvg on the federated task under one partition scheme (iid or dirichlet)."""
    section = edge["federated"]
    data = task(edge, "federated.task", seed)
    settings = settings_from(FederatedSettings, section, threads=threads, seed=seed)
    result = federated_averaging(data.train, data.test, scheme, settings, edge["image_size"])
    write_json(out, result)
    return result


def leakage_stage(edge: dict, seed: int, defense: str, out: str | Path, snapshots: str | Path) -> dict:
    """DLG and iDLG against one defense at every configured strength (none: no defense, every batch size).

    Writes the attack metrics, curves and the accuracy of a net trained through the defense to
    ``out``, and the initial / middle / final reconstructions beside the true images to ``snapshots``.
    """
    section = edge["leakage"]
    loaded = task(edge, "leakage.task", seed)
    data, train = loaded.test, loaded.train
    image_shape = tuple(data.images.shape[1:])
    strengths = [0.0] if defense == "none" else section["defenses"][defense]
    batch_sizes = section["batch_sizes"] if defense == "none" else [section["defense_batch_size"]]
    settings = settings_from(leakage.AttackSettings, section, record_every=max(1, section["iterations"] // 20),
                             seed=seed)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(data.labels), generator=generator)
    attacks, arrays = [], {}
    for strength in strengths:
        leakage.check_defense(defense, strength)
        trained = leakage.train_with_defense(
            train.images, train.labels, data.images, data.labels, defense, strength,
            steps=section["accuracy"]["steps"], batch_size=section["accuracy"]["batch_size"],
            lr=section["accuracy"]["lr"], seed=seed, classes=len(data.classes))
        for batch in batch_sizes:
            for attempt in range(section["attacks"]):
                index = picks[(attempt * batch) % len(picks):][:batch]
                truth, labels = data.images[index], data.labels[index]
                net = leakage.attacked_net(image_shape[0], len(data.classes), image_shape[-1], seed + attempt)
                sent = leakage.defend(leakage.gradients(net, truth, labels), defense, strength,
                                      torch.Generator().manual_seed(seed + attempt))
                for method in section["methods"]:
                    result = leakage.attack(net, sent, truth, labels, method, settings)
                    key = f"{method}_b{batch}_s{strength:g}_a{attempt}"
                    arrays.update({f"{key}_{name}": v.numpy() for name, v in result.snapshots.items()})
                    arrays[f"{key}_truth"] = truth.numpy()
                    attacks.append({"defense": defense, "strength": strength, "method": method, "batch_size": batch,
                                    "attack": attempt, **result.metrics, "labels_true": labels.tolist(),
                                    "labels_predicted": result.labels, "seconds": result.seconds,
                                    "evaluations": result.evaluations, "curve": result.curve,
                                    "model_test_accuracy": trained["test_accuracy"], "snapshot_key": key})
                    log.info("%s %s=%g batch %d: PSNR %.1f dB, labels %.2f, %.1f s", method, defense, strength, batch,
                             result.metrics["psnr"], result.metrics["label_accuracy"], result.seconds)
    with atomic_path(snapshots) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    result = {"defense": defense, "attacks": attacks, "settings": settings.__dict__}
    write_json(out, result)
    return result


def leakage_stages(edge: dict, seed: int, outputs: Mapping[str, tuple[str | Path, str | Path]]) -> dict:
    """Rule edge_leakage: every defense of ``outputs`` (defense -> its JSON and snapshot files) in turn,
    in one process (as ``transfer_stage``, and the strengths are in the job's params too)."""
    return {defense: leakage_stage(edge, seed, defense, out, snapshots)
            for defense, (out, snapshots) in outputs.items()}


def _compression_data(edge: dict, seed: int) -> tuple[ImageSet, ImageSet, ImageSet]:
    """The source task (the source net's own): training minus a validation share, validation, test."""
    source = task(edge, "source", seed)
    train, validation = split_validation(source.train, edge["compression"]["validation_fraction"], seed)
    return train, validation, source.test


def pruning_stage(edge: dict, seed: int, source_path: str | Path, out: str | Path) -> dict:
    """Sensitivity scan, fine-grained pruning (per layer and global) and channel pruning, each fine-tuned."""
    section = edge["compression"]
    train, validation, test = _compression_data(edge, seed)
    net = nets.load(source_path)
    settings = _settings(section["finetune"], seed)
    start = time.perf_counter()
    reference = {"test_accuracy": evaluate(net, test)["accuracy"], **compression.size_report(net),
                 "macs": compression.count_macs(net, _image_shape(edge))}
    scan = compression.sensitivity_scan(net, validation, section["pruning"]["scan_sparsities"])
    per_layer = compression.sensitivity_sparsities(scan, section["pruning"]["max_accuracy_drop"])
    fine = [{"method": "sensitivity", "target_sparsity": None,
             **compression.prune_and_finetune(net, train, test, settings, per_layer=per_layer)}]
    for sparsity in section["pruning"]["sparsities"]:
        fine.append({"method": "global", "target_sparsity": sparsity,
                     **compression.prune_and_finetune(net, train, test, settings, sparsity=sparsity)})
    channels = []
    for ratio in section["pruning"]["channel_ratios"]:
        pruned = compression.prune_channels(net, ratio)
        before = evaluate(pruned, test)["accuracy"]
        for p in pruned.parameters():
            p.requires_grad_(True)
        history = fit(pruned, train, settings)
        channels.append({"channel_ratio": ratio, "test_accuracy_pruned": before,
                         "test_accuracy_finetuned": evaluate(pruned, test)["accuracy"], "history": history,
                         "macs": compression.count_macs(pruned, _image_shape(edge)),
                         **compression.size_report(pruned)})
    result = {"reference": reference, "sensitivity": scan, "sensitivity_sparsities": per_layer,
              "max_accuracy_drop": section["pruning"]["max_accuracy_drop"],
              "fine_grained": fine, "channels": channels, "seconds": time.perf_counter() - start}
    write_json(out, result)
    return result


def quantization_stage(edge: dict, seed: int, source_path: str | Path, out: str | Path) -> dict:
    """K-means quantization at each bit width (before and after codebook fine-tuning), and linear."""
    section = edge["compression"]
    train, _, test = _compression_data(edge, seed)
    net = nets.load(source_path)
    settings = _settings(section["finetune"], seed)
    start = time.perf_counter()
    kmeans = []
    for bits in section["quantization"]["kmeans_bits"]:
        quantizer = compression.KMeansQuantizer(nets.load(source_path), bits)
        before = evaluate(quantizer.net, test)["accuracy"]
        history = quantizer.finetune(train, settings)
        kmeans.append({"bits": bits, "test_accuracy_quantized": before,
                       "test_accuracy_finetuned": evaluate(quantizer.net, test)["accuracy"], "history": history,
                       **quantizer.sizes()})
    linear = [{"bits": bits, "test_accuracy": evaluate(compression.linear_quantize(net, bits), test)["accuracy"],
               **compression.linear_sizes(net, bits)} for bits in section["quantization"]["linear_bits"]]
    result = {"reference": {"test_accuracy": evaluate(net, test)["accuracy"], **compression.size_report(net)},
              "kmeans": kmeans, "linear": linear, "seconds": time.perf_counter() - start}
    write_json(out, result)
    return result


def distillation_stage(edge: dict, seed: int, source_path: str | Path, out: str | Path) -> dict:
    """A narrower student trained on labels alone and distilled from the source net at each temperature."""
    section = edge["compression"]["distillation"]
    train, _, test = _compression_data(edge, seed)
    teacher = nets.load(source_path)
    # The student trains as the source net was pretrained, for the distillation's own epochs.
    settings = settings_from(TrainSettings, edge["pretrain"], epochs=section["epochs"], seed=seed)
    student_config = {**teacher.config, "width": section["student_width"]}

    def student() -> torch.nn.Module:
        torch.manual_seed(seed)
        return nets.build("mobilenet", **student_config)

    start = time.perf_counter()
    rows = []
    alone = student()
    history = fit(alone, train, settings)
    rows.append({"method": "labels only", "temperature": None, "alpha": 0.0,
                 "test_accuracy": evaluate(alone, test)["accuracy"], "history": history})
    for temperature in section["temperatures"]:
        distilled = student()
        history = compression.distill(teacher, distilled, train, settings, temperature, section["alpha"])
        rows.append({"method": "distilled", "temperature": temperature, "alpha": section["alpha"],
                     "test_accuracy": evaluate(distilled, test)["accuracy"], "history": history})
    result = {"teacher": {"test_accuracy": evaluate(teacher, test)["accuracy"], **compression.size_report(teacher)},
              "student": compression.size_report(alone), "student_width": section["student_width"],
              "epochs": section["epochs"], "students": rows, "seconds": time.perf_counter() - start}
    write_json(out, result)
    return result


_COMPRESSORS = {"pruning": pruning_stage, "quantization": quantization_stage, "distillation": distillation_stage}


def compression_stage(method: str, edge: dict, seed: int, source_path: str | Path, out: str | Path) -> dict:
    """``pruning``, ``quantization`` or ``distillation`` of the source net."""
    if method not in _COMPRESSORS:
        raise PipelineError(f"unknown compression method {method!r}; expected one of {', '.join(COMPRESSIONS)}")
    return _COMPRESSORS[method](edge, seed, source_path, out)


def compression_stages(edge: dict, seed: int, source_path: str | Path, outputs: Mapping[str, str | Path]) -> dict:
    """Rule edge_compress: every method of ``outputs`` (method -> its JSON) in turn, in one process
    (as ``transfer_stage``; the methods share the job's params)."""
    return {method: compression_stage(method, edge, seed, source_path, out) for method, out in outputs.items()}
