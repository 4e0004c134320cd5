"""Deep leakage from gradients: a curious server rebuilds a client's images from the gradient it sent.

* **DLG** (Zhu et al., 2019): random dummy images and dummy label logits are optimised with L-BFGS
  so that the gradient they produce matches the client's (squared L2 distance, summed over layers).
* **iDLG** (Zhao et al., 2020): the label is read off the gradient first and held fixed. With one
  image, the row of the last layer's weight gradient that belongs to the true class is the only one
  with a negative sum (its inputs are sigmoid outputs, positive; its logit gradient is p - 1 < 0).
  With a batch (our extension), the last layer's bias gradient ``mean(p) - share of each class``
  gives the class counts when the attacked net predicts nearly uniformly, as an untrained one does.

The attacked net is the sigmoid LeNet of the papers with their initialisation (uniform in
[-0.5, 0.5]). Defenses transform the update on the client before it is sent: Gaussian or Laplacian
noise of a given scale, or gradient pruning that keeps only the largest magnitudes of each tensor
(Deep Gradient Compression; in training, the pruned rest is accumulated locally and sent later).
Metrics: MSE, PSNR (images in [0, 1]), SSIM (11x11 Gaussian window, sigma 1.5) and label accuracy;
for a batch, reconstructions are matched to the true images by the assignment of least MSE.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch.nn import functional as F

from analysis.edge.names import DEFENSES, METHODS
from analysis.edge.nets import LeNet
from analysis.errors import PipelineError

# torchmetrics is imported by the two metrics that use it (about 2.6 s measured on a busy machine,
# torch already loaded), so that the tests and tables importing this module do not pay it.

log = logging.getLogger(__name__)


def check_defense(name: str, strength: float) -> None:
    if name not in DEFENSES:
        raise PipelineError(f"unknown defense {name!r}; expected one of {', '.join(DEFENSES)}")
    if name == "prune" and not 0 <= strength < 1:
        raise PipelineError(f"defense prune: ratio {strength} is not in [0, 1)")
    if name in ("gaussian", "laplacian") and strength < 0:
        raise PipelineError(f"defense {name}: scale {strength} is negative")


def prune_mask(g: torch.Tensor, ratio: float) -> torch.Tensor:
    """True where ``g`` keeps its value: the ``1 - ratio`` largest magnitudes (at least one entry)."""
    keep = max(1, int(round(g.numel() * (1 - ratio))))
    threshold = g.abs().flatten().kthvalue(g.numel() - keep + 1).values
    return g.abs() >= threshold


def defend(grads: Sequence[torch.Tensor], name: str, strength: float, generator: torch.Generator) -> list[torch.Tensor]:
    """The update a client sends under a defense (``strength``: noise scale, or share of entries pruned)."""
    check_defense(name, strength)
    if name == "none" or strength == 0:
        return [g.clone() for g in grads]
    if name == "gaussian":
        return [g + strength * torch.randn(g.shape, generator=generator) for g in grads]
    if name == "laplacian":  # Laplace(0, b) as the difference of two exponentials of mean b
        return [g + strength * (torch.empty(g.shape).exponential_(generator=generator)
                                - torch.empty(g.shape).exponential_(generator=generator)) for g in grads]
    return [g * prune_mask(g, strength) for g in grads]


def dlg_init(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The papers' initialisation: every weight and bias uniform in [-0.5, 0.5]."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.rand(p.shape, generator=generator) - 0.5)
    return net


def gradients(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """The gradient of the mean cross-entropy a client computes on its batch, per parameter."""
    loss = F.cross_entropy(net(images), labels)
    return [g.detach() for g in torch.autograd.grad(loss, list(net.parameters()))]


def infer_labels(grads: Sequence[torch.Tensor], batch: int, classes: int) -> torch.Tensor:
    """iDLG's labels from the last layer's gradient (weight rows for one image, bias for a batch)."""
    weight, bias = grads[-2], grads[-1]
    if batch == 1:
        return weight.sum(1).argmin().view(1)
    share = (1.0 / classes - bias).clamp(min=0) * batch  # expected count per class
    counts = share.floor()
    while counts.sum() < batch:  # hand out the rest by the largest remainders
        counts[(share - counts).argmax()] += 1
    while counts.sum() > batch:
        counts[counts.argmax()] -= 1
    return torch.repeat_interleave(torch.arange(classes), counts.long())


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of two images (C, H, W) in [0, 1]: torchmetrics' ``structural_similarity_index_measure``
    (Wang et al. 2004: Gaussian window of 11 pixels, sigma 1.5, K1 0.01, K2 0.03), the reference most
    leakage papers report. torchmetrics 1.9 reflect-pads the images and averages the whole SSIM map,
    as the hand-written version this replaced did: the demo's SSIM column moved by at most 4e-7."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(a[None], b[None], data_range=1.0))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1] (torchmetrics' ``peak_signal_noise_ratio``); inf if equal."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a[None], b[None], data_range=1.0))


def match(recon: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """For each true image, the index of its reconstruction (least total MSE)."""
    cost = ((truth[:, None] - recon[None]) ** 2).flatten(2).mean(2).numpy()
    _, columns = linear_sum_assignment(cost)
    return columns


def score(recon: torch.Tensor, truth: torch.Tensor, labels_pred: torch.Tensor, labels: torch.Tensor) -> dict:
    recon = recon.detach().clamp(0, 1)
    order = match(recon, truth)
    recon, labels_pred = recon[order], labels_pred[order]
    mse = [float(((r - t) ** 2).mean()) for r, t in zip(recon, truth)]
    return {"mse": float(np.mean(mse)), "psnr": float(np.mean([psnr(r, t) for r, t in zip(recon, truth)])),
            "ssim": float(np.mean([ssim(r, t) for r, t in zip(recon, truth)])),
            "label_accuracy": float((labels_pred == labels).float().mean()), "order": order.tolist()}


@dataclass
class AttackSettings:
    """The attack's part of section edge.leakage (``config.settings_from``)."""

    SECTION: ClassVar[str] = "edge.leakage"
    iterations: int  # L-BFGS steps
    evaluations_per_step: int  # L-BFGS max_iter: gradient-matching evaluations per step
    # L-BFGS from a random start sometimes stalls (saturated sigmoids); the attacker, who sees the
    # gradient distance but not the image, restarts from a new random start and keeps the closest.
    restarts: int
    record_every: int = 10
    seed: int = 0
    converged: float = 1e-6  # no further restart once the distance fell below this share of its start


@dataclass
class AttackResult:
    metrics: dict
    snapshots: dict[str, torch.Tensor]  # "initial", "middle", "final": (B, C, H, W) in [0, 1]
    curve: list[dict] = field(default_factory=list)  # per record_every steps: gradient loss, PSNR, seconds
    labels: list[int] = field(default_factory=list)
    seconds: float = 0.0
    evaluations: int = 0


def attack(net: torch.nn.Module, target: Sequence[torch.Tensor], truth: torch.Tensor, labels: torch.Tensor,
           method: str, settings: AttackSettings) -> AttackResult:
    """Reconstruct ``truth``'s batch from the gradient ``target`` (``truth`` and ``labels`` only score it).

    Up to ``settings.restarts`` attempts from different random starts; the one with the smallest
    gradient distance is returned (``metrics["restarts"]``: attempts made), with the wall time and
    evaluations of all attempts.
    """
    if method not in METHODS:
        raise PipelineError(f"unknown attack {method!r}; expected one of {', '.join(METHODS)}")
    best, seconds, evaluations = None, 0.0, 0
    for attempt in range(max(1, settings.restarts)):
        result, start_distance = _attack_once(net, target, truth, labels, method, settings,
                                              settings.seed + 7919 * attempt)
        seconds, evaluations = seconds + result.seconds, evaluations + result.evaluations
        if best is None or result.metrics["gradient_distance"] < best.metrics["gradient_distance"]:
            best = result
        best.metrics["restarts"] = attempt + 1
        if best.metrics["gradient_distance"] <= settings.converged * start_distance:
            break
    best.seconds, best.evaluations = seconds, evaluations
    return best


def _attack_once(net, target, truth, labels, method: str, settings: AttackSettings, seed: int):
    batch, classes = truth.shape[0], net.config["num_classes"]
    generator = torch.Generator().manual_seed(seed)
    dummy = torch.randn(truth.shape, generator=generator).requires_grad_(True)
    params = list(net.parameters())
    if method == "dlg":
        dummy_label = torch.randn(batch, classes, generator=generator).requires_grad_(True)
        variables = [dummy, dummy_label]
    else:
        fixed = infer_labels(target, batch, classes)
        variables = [dummy]
    optimizer = torch.optim.LBFGS(variables, lr=1, max_iter=settings.evaluations_per_step)
    counter = {"evaluations": 0}

    def predicted_labels() -> torch.Tensor:
        return dummy_label.detach().argmax(1) if method == "dlg" else fixed

    def closure():
        optimizer.zero_grad()
        logits = net(dummy)
        if method == "dlg":
            loss = torch.sum(-F.softmax(dummy_label, -1) * F.log_softmax(logits, -1), -1).mean()
        else:
            loss = F.cross_entropy(logits, fixed)
        dummy_grads = torch.autograd.grad(loss, params, create_graph=True)
        distance = sum(((d - t) ** 2).sum() for d, t in zip(dummy_grads, target))
        distance.backward()
        counter["evaluations"] += 1
        return distance

    snapshots = {"initial": dummy.detach().clamp(0, 1).clone()}
    curve, start = [], time.perf_counter()
    start_distance = float(closure().detach())
    best = (float("inf"), dummy.detach().clone())
    for step in range(1, settings.iterations + 1):
        loss = float(optimizer.step(closure).detach())
        if not math.isfinite(loss):
            log.warning("%s: gradient distance is %s at step %d; keeping the best reconstruction", method, loss, step)
            break
        if loss < best[0]:
            best = (loss, dummy.detach().clone())
        if step == settings.iterations // 2:
            snapshots["middle"] = dummy.detach().clamp(0, 1).clone()
        if step % settings.record_every == 0 or step == settings.iterations:
            scores = score(dummy, truth, predicted_labels(), labels)
            curve.append({"step": step, "gradient_distance": loss, "psnr": scores["psnr"], "mse": scores["mse"],
                          "evaluations": counter["evaluations"], "seconds": time.perf_counter() - start})
    snapshots.setdefault("middle", best[1].clamp(0, 1))
    snapshots["final"] = best[1].clamp(0, 1)
    metrics = score(best[1], truth, predicted_labels(), labels)
    metrics["gradient_distance"] = best[0]
    order = metrics.pop("order")
    snapshots = {k: v[order] for k, v in snapshots.items()}
    return AttackResult(metrics=metrics, snapshots=snapshots, curve=curve,
                        labels=predicted_labels()[order].tolist(), seconds=time.perf_counter() - start,
                        evaluations=counter["evaluations"]), start_distance


def attacked_net(in_channels: int, classes: int, image_size: int, seed: int) -> LeNet:
    return dlg_init(LeNet(in_channels, classes, image_size, activation="sigmoid"), seed)


def train_with_defense(train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                       test_labels: torch.Tensor, name: str, strength: float, *, steps: int, batch_size: int,
                       lr: float, seed: int, classes: int) -> dict:
    """Test accuracy of a LeNet trained by SGD on updates sent through the defense (FedSGD, one client).

    Pruning accumulates what it did not send and adds it to the next update (DGC's local gradient
    accumulation); noise is drawn afresh every step.
    """
    check_defense(name, strength)
    torch.manual_seed(seed)
    net = LeNet(train_images.shape[1], classes, train_images.shape[-1], activation="relu")
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)  # plain FedSGD: the update is the defended gradient
    generator = torch.Generator().manual_seed(seed + 1)
    residual = [torch.zeros_like(p) for p in net.parameters()]
    order, position = torch.randperm(len(train_labels), generator=generator), 0
    for _ in range(steps):
        if position >= len(order):
            order, position = torch.randperm(len(train_labels), generator=generator), 0
        index = order[position:position + batch_size]
        position += batch_size
        grads = gradients(net, train_images[index], train_labels[index])
        if name == "prune":
            grads = [g + r for g, r in zip(grads, residual)]
        sent = defend(grads, name, strength, generator)
        if name == "prune":
            residual = [g - s for g, s in zip(grads, sent)]
        for p, s in zip(net.parameters(), sent):
            p.grad = s
        optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(test_images).argmax(1) == test_labels).float().mean())
    return {"test_accuracy": accuracy, "steps": steps}
