"""Model compression of the source net: pruning, quantization and knowledge distillation.

* **Fine-grained magnitude pruning** with torch's own utilities (``torch.nn.utils.prune``): a
  per-layer sensitivity scan (one layer pruned alone at each sparsity, accuracy on a validation
  split), then prune-then-fine-tune at global sparsities (``global_unstructured``, L1) and at the
  per-layer sparsities the scan allows within an accuracy drop.
* **Channel pruning**: the hidden (expanded) channels of every inverted-residual block, ranked by
  the L2 norm of the projection weights that read them, are removed, giving a physically smaller
  net; then fine-tuning.
* **K-means quantization** (Deep Compression): each layer's weights are clustered into 2^bits
  shared values (1-D k-means, linear initialisation); fine-tuning updates the centroids with the
  summed gradients of their weights, assignments fixed.
* **Linear quantization**: affine, per output channel, weights to ``bits``-bit integers and back
  (scale = (max - min) / (2^bits - 1), integer zero point).
* **Knowledge distillation** (Hinton et al.): a narrower student trained on
  ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy`` against the same
  student trained on the labels alone.

Sizes count stored weights only (``weight_kib``): dense float32 for the reference; non-zero
weights at 32 bits for pruning (sparse index overhead excluded, as in the lecture's figures); bits
per weight plus a float32 codebook for k-means; bits per weight plus a float32 scale and zero point
per channel for linear quantization. Biases and batch norm stay float32 and are counted once in
``other_kib``.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune

from analysis.edge.data import ImageSet
from analysis.edge.layers import ConvBN
from analysis.edge.nets import MobileNet
from analysis.edge.train import TrainSettings, evaluate, fit, set_training
from analysis.errors import PipelineError

log = logging.getLogger(__name__)
KIB = 1024


def weight_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The modules owning a prunable / quantisable weight: every convolution and the classifier."""
    layers = {}
    for name, module in net.named_modules():
        if isinstance(module, ConvBN):
            layers[name] = module.conv
        elif isinstance(module, nn.Linear):
            layers[name] = module
    return layers


def _weight(module: nn.Module) -> torch.Tensor:
    return module.weight_orig * module.weight_mask if hasattr(module, "weight_mask") else module.weight


def size_report(net: nn.Module, bits: dict[str, int] | None = None, codebook: dict[str, int] | None = None) -> dict:
    """Stored size in KiB: weights (non-zeros at their bits, plus codebooks) and everything else at float32."""
    bits, codebook = bits or {}, codebook or {}
    layers = weight_layers(net)
    weight_bits, weights, nonzero = 0, 0, 0
    for name, module in layers.items():
        w = _weight(module)
        count = int((w != 0).sum())
        weights += w.numel()
        nonzero += count
        weight_bits += count * bits.get(name, 32) + codebook.get(name, 0)
    weight_ids = {id(m.weight_orig if hasattr(m, "weight_mask") else m.weight) for m in layers.values()}
    other = sum(p.numel() for p in net.parameters() if id(p) not in weight_ids)
    return {"weight_kib": weight_bits / 8 / KIB, "other_kib": other * 4 / KIB,
            "size_kib": weight_bits / 8 / KIB + other * 4 / KIB, "weights": weights, "nonzero_weights": nonzero,
            "sparsity": 1 - nonzero / weights}


# --- fine-grained pruning -----------------------------------------------------------------------

def sensitivity_scan(net: nn.Module, validation: ImageSet, sparsities: Sequence[float]) -> list[dict]:
    """Accuracy with one layer at a time pruned (L1, unstructured) to each sparsity."""
    base = evaluate(net, validation)["accuracy"]
    rows = []
    for name in weight_layers(net):
        for sparsity in sparsities:
            pruned = copy.deepcopy(net)
            prune.l1_unstructured(weight_layers(pruned)[name], "weight", amount=sparsity)
            accuracy = evaluate(pruned, validation)["accuracy"]
            rows.append({"layer": name, "sparsity": sparsity, "validation_accuracy": accuracy,
                         "accuracy_drop": base - accuracy})
    return rows


def sensitivity_sparsities(scan: Sequence[dict], max_drop: float) -> dict[str, float]:
    """Per layer, the largest scanned sparsity whose accuracy drop stays within ``max_drop``."""
    chosen: dict[str, float] = {}
    for row in scan:
        if row["accuracy_drop"] <= max_drop:
            chosen[row["layer"]] = max(chosen.get(row["layer"], 0.0), row["sparsity"])
        else:
            chosen.setdefault(row["layer"], 0.0)
    return chosen


def prune_and_finetune(net: nn.Module, train: ImageSet, test: ImageSet, settings: TrainSettings, *,
                       sparsity: float | None = None, per_layer: dict[str, float] | None = None) -> dict:
    """Prune (globally to ``sparsity``, or per layer) and fine-tune with the masks fixed."""
    pruned = copy.deepcopy(net)
    layers = weight_layers(pruned)
    if per_layer is not None:
        for name, amount in per_layer.items():
            if amount > 0:
                prune.l1_unstructured(layers[name], "weight", amount=amount)
    else:
        prune.global_unstructured([(m, "weight") for m in layers.values()], pruning_method=prune.L1Unstructured,
                                  amount=sparsity)
    before = evaluate(pruned, test)
    # Every parameter trains; the masks stay as they are because torch keeps them as buffers (the
    # pruned weight is weight_orig * weight_mask), so pruned weights stay zero.
    for parameter in pruned.parameters():
        parameter.requires_grad_(True)
    history = fit(pruned, train, settings)
    after = evaluate(pruned, test)
    report = size_report(pruned)
    for module in layers.values():  # make the zeros permanent
        if hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
    return {"test_accuracy_pruned": before["accuracy"], "test_accuracy_finetuned": after["accuracy"],
            "history": history, **report}


# --- channel pruning -------------------------------------------------------------------------------

def _slice_convbn(layer: ConvBN, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None) -> ConvBN:
    conv = layer.conv
    cin = conv.in_channels if in_keep is None else len(in_keep)
    cout = conv.out_channels if out_keep is None else len(out_keep)
    groups = cout if conv.groups > 1 else 1
    new = ConvBN(cin, cout, conv.kernel_size[0], conv.stride[0], groups=groups, bn=layer.bn is not None,
                 frugal=layer.frugal)
    w = conv.weight.detach()
    if out_keep is not None:
        w = w[out_keep]
    if in_keep is not None and conv.groups == 1:
        w = w[:, in_keep]
    new.conv.weight.data.copy_(w)
    if layer.bn is not None:
        keep = out_keep if out_keep is not None else torch.arange(cout)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new.bn, name).data.copy_(getattr(layer.bn, name).detach()[keep])
    return new


def prune_channels(net: MobileNet, ratio: float) -> MobileNet:
    """A copy of ``net`` with ``ratio`` of each block's hidden channels removed (the least important)."""
    if not 0 <= ratio < 1:
        raise PipelineError(f"channel pruning ratio {ratio} is not in [0, 1)")
    pruned = copy.deepcopy(net)
    for block in pruned.blocks:
        if block.expand is None or ratio == 0:
            continue  # without an expansion the hidden channels are the block input, shared with the shortcut
        hidden = block.depthwise.conv.out_channels
        importance = block.project.conv.weight.detach().pow(2).sum((0, 2, 3))  # per input channel
        keep = importance.argsort(descending=True)[: max(1, round(hidden * (1 - ratio)))].sort().values
        block.expand = _slice_convbn(block.expand, keep, None)
        block.depthwise = _slice_convbn(block.depthwise, keep, keep)
        block.project = _slice_convbn(block.project, None, keep)
    return pruned


def count_macs(net: nn.Module, image_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    total = 0

    def hook(module, args, output):
        nonlocal total
        conv = module.conv
        total += output.numel() // output.shape[0] * (conv.in_channels // conv.groups) * conv.kernel_size[0] ** 2

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, ConvBN)]
    with torch.no_grad():
        set_training(net, False)
        net(torch.zeros(1, *image_shape))
    for h in handles:
        h.remove()
    linear = sum(m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear))
    return total + linear


# --- quantization ----------------------------------------------------------------------------------

def kmeans_1d(values: torch.Tensor, clusters: int, iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (clusters,) and assignments (values.shape) of 1-D k-means, linear initialisation."""
    flat = values.detach().flatten()
    centroids = torch.linspace(float(flat.min()), float(flat.max()), clusters)
    for _ in range(iterations):
        distance = (flat[:, None] - centroids[None]).abs()
        assign = distance.argmin(1)
        sums = torch.zeros(clusters).index_add_(0, assign, flat)
        counts = torch.zeros(clusters).index_add_(0, assign, torch.ones_like(flat))
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        error = distance.gather(1, assign[:, None]).squeeze(1)
        for empty in torch.nonzero(counts == 0).flatten():  # an unused value moves to the worst-served weight
            worst = int(error.argmax())
            updated[empty], error[worst] = flat[worst], 0.0
        if torch.allclose(updated, centroids):
            break
        centroids = updated
    assign = (flat[:, None] - centroids[None]).abs().argmin(1)
    return centroids, assign.view(values.shape)


class KMeansQuantizer:
    """Every weight layer of ``net`` shares 2^bits values; ``finetune`` trains the codebooks."""

    def __init__(self, net: nn.Module, bits: int):
        if not 1 <= bits <= 8:
            raise PipelineError(f"k-means quantization: {bits} bits is not in 1..8")
        self.net, self.bits = net, bits
        self.codebooks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, module in weight_layers(net).items():
            clusters = min(2**bits, module.weight.numel())
            self.codebooks[name] = kmeans_1d(module.weight, clusters)
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for name, module in weight_layers(self.net).items():
            centroids, assign = self.codebooks[name]
            module.weight.copy_(centroids[assign])

    def finetune(self, train: ImageSet, settings: TrainSettings) -> list[dict]:
        """SGD on the centroids: each one moves by the summed gradient of the weights assigned to it."""
        net = self.net
        for p in net.parameters():
            p.requires_grad_(True)
        other = [p for n, p in net.named_parameters() if not any(n == f"{k}.weight" or n == f"{k}.conv.weight"
                                                                   for k in self.codebooks)]
        optimizer = torch.optim.SGD(other, lr=settings.lr, momentum=settings.momentum)
        generator = torch.Generator().manual_seed(settings.seed)
        history = []
        for epoch in range(settings.epochs):
            set_training(net, True)
            order = torch.randperm(len(train.labels), generator=generator)
            for start in range(0, len(order), settings.batch_size):
                index = order[start:start + settings.batch_size]
                loss = F.cross_entropy(net(train.images[index]), train.labels[index])
                net.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for name, module in weight_layers(net).items():
                        centroids, assign = self.codebooks[name]
                        grad = torch.zeros_like(centroids).index_add_(0, assign.flatten(), module.weight.grad.flatten())
                        centroids -= settings.lr * grad
                self.apply()
            history.append({"epoch": epoch + 1, "train_loss": loss.item()})
        set_training(net, False)
        return history

    def sizes(self) -> dict:
        layers = weight_layers(self.net)
        return size_report(self.net, bits={n: self.bits for n in layers},
                           codebook={n: 32 * len(self.codebooks[n][0]) for n in layers})


@torch.no_grad()
def linear_quantize(net: nn.Module, bits: int) -> nn.Module:
    """A copy of ``net`` with every weight layer quantised per output channel to ``bits`` bits and back."""
    if not 2 <= bits <= 16:
        raise PipelineError(f"linear quantization: {bits} bits is not in 2..16")
    quantized = copy.deepcopy(net)
    levels = 2**bits - 1
    for module in weight_layers(quantized).values():
        w = module.weight
        flat = w.flatten(1)
        low, high = flat.min(1).values.clamp(max=0), flat.max(1).values.clamp(min=0)  # zero stays exact
        scale = ((high - low) / levels).clamp(min=1e-12)
        zero = torch.round(-low / scale)
        q = torch.clamp(torch.round(flat / scale[:, None]) + zero[:, None], 0, levels)
        w.copy_(((q - zero[:, None]) * scale[:, None]).view_as(w))
    return quantized


def linear_sizes(net: nn.Module, bits: int) -> dict:
    layers = weight_layers(net)
    return size_report(net, bits={n: bits for n in layers},
                       codebook={n: 64 * m.weight.shape[0] for n, m in layers.items()})  # scale + zero point


# --- distillation ----------------------------------------------------------------------------------

def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    soft = F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1),
                    reduction="batchmean") * temperature**2
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def distill(teacher: nn.Module, student: nn.Module, train: ImageSet, settings: TrainSettings, temperature: float,
            alpha: float) -> list[dict]:
    """Train ``student`` on the teacher's softened outputs (the teacher stays in inference mode)."""
    set_training(teacher, False)
    with torch.no_grad():
        teacher_logits = torch.cat([teacher(train.images[i:i + 256]) for i in range(0, len(train.labels), 256)])
    loss_fn: Callable = lambda logits, index: distillation_loss(  # noqa: E731
        logits, teacher_logits[index], train.labels[index], temperature, alpha)
    return fit(student, train, settings, loss_fn=loss_fn)
