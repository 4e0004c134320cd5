"""TinyTL transfer modes and sparse schemes on a pretrained ``MobileNet``, and their training memory.

Modes (the classifier is new for the target task and always trained):

* ``full``: every parameter; batch norm with batch statistics.
* ``last``: the classifier only.
* ``bn_last``: every batch-norm scale and shift (batch statistics), and the classifier.
* ``bias``: every bias (batch-norm shifts, folded into the convolutions), and the classifier.
* ``lite_residual``: a lite residual branch beside every block (TinyTL), and the classifier.
* ``lite_residual_bias``: lite residual branches, every bias, and the classifier.

Outside ``full`` and ``bn_last`` batch norm keeps the source task's running statistics.

A sparse scheme (``analysis.selection.search.SparseScheme``) trains the biases of the last
``n_bias_update`` blocks (and of the head convolution) and, per layer, a fraction of its weight;
layer names are relative to the block list: ``"3.depthwise"``, ``"-1.project"``, ``"0.expand"``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from analysis.edge.layers import ConvBN
from analysis.edge.names import MODES
from analysis.edge.nets import MobileNet
from analysis.edge.train import set_training
from analysis.errors import PipelineError
from analysis.selection.memory import analytic_memory, saved_for_backward
from analysis.selection.search import SparseScheme

LAYER_KINDS = ("expand", "depthwise", "project")


def _prepare(net: MobileNet, num_classes: int, seed: int) -> None:
    torch.manual_seed(seed)
    net.new_classifier(num_classes)
    for p in net.parameters():
        p.requires_grad_(False)


def _freeze_statistics(net: nn.Module, frozen: bool) -> None:
    for module in net.modules():
        if isinstance(module, ConvBN):
            module.bn_frozen = frozen


def _biases(modules) -> list[nn.Parameter]:
    params = []
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, ConvBN):
                params.append(sub.bn.bias if sub.bn is not None else sub.conv.bias)
    return [p for p in params if p is not None]


def apply_mode(net: MobileNet, mode: str, num_classes: int, *, seed: int = 0, lite_group_size: int = 8) -> MobileNet:
    """Freeze what ``mode`` does not train, with a new classifier for ``num_classes`` classes."""
    if mode not in MODES:
        raise PipelineError(f"unknown transfer mode {mode!r}; expected one of {', '.join(MODES)}")
    _prepare(net, num_classes, seed)
    _freeze_statistics(net, mode not in ("full", "bn_last"))
    train: list[nn.Parameter] = list(net.classifier.parameters())
    if mode == "full":
        train = list(net.parameters())
    elif mode == "bn_last":
        train += [p for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()]
    if mode in ("bias", "lite_residual_bias"):
        train += _biases([net])
    if mode.startswith("lite_residual"):
        for block in net.blocks:
            train += list(block.add_lite_residual(lite_group_size).parameters())
    for p in train:
        p.requires_grad_(True)
    return net


def resolve_layer(net: MobileNet, spec: str) -> ConvBN:
    index, _, kind = spec.partition(".")
    try:
        block = net.blocks[int(index)]
    except (ValueError, IndexError):
        raise PipelineError(f"layer {spec!r}: {index!r} is not a block index (0..{len(net.blocks) - 1} or negative)") from None
    layer = getattr(block, kind, None) if kind in LAYER_KINDS else None
    if not isinstance(layer, ConvBN):
        present = [k for k in LAYER_KINDS if isinstance(getattr(block, k, None), ConvBN)]
        raise PipelineError(f"layer {spec!r}: block {index} has no layer {kind!r}; it has {', '.join(present)}")
    return layer


def layer_names(net: MobileNet) -> list[str]:
    """Every weight layer of the blocks, as ``"<block>.<kind>"``."""
    return [f"{i}.{kind}" for i, block in enumerate(net.blocks) for kind in LAYER_KINDS
            if isinstance(getattr(block, kind, None), ConvBN)]


def apply_sparse(net: MobileNet, scheme: SparseScheme, num_classes: int, *, seed: int = 0) -> MobileNet:
    """Freeze everything but the scheme's biases and (partial) weights, and a new classifier."""
    if scheme.n_bias_update > len(net.blocks):
        raise PipelineError(f"n_bias_update = {scheme.n_bias_update} but the net has {len(net.blocks)} blocks")
    for layer, ratio in scheme.weight_update:
        if not 0 < ratio <= 1:
            raise PipelineError(f"layer {layer!r}: update ratio {ratio} is not in (0, 1]")
    _prepare(net, num_classes, seed)
    _freeze_statistics(net, True)
    train = list(net.classifier.parameters())
    if scheme.n_bias_update:
        train += _biases([*list(net.blocks)[-scheme.n_bias_update:], net.head])
    for spec, ratio in scheme.weight_update:
        layer = resolve_layer(net, spec)
        layer.set_update_ratio(ratio)
        train += [layer.conv.weight] if layer.delta is None else [layer.delta]
    for p in train:
        p.requires_grad_(True)
    return net


def _owner(name: str, layers: set[str]) -> str:
    while name and name not in layers:
        name = name.rpartition(".")[0]
    return name


def memory_report(net: nn.Module, batch_size: int, image_shape: tuple[int, ...], num_classes: int,
                  *, momentum_buffers: int = 1, measure: bool = True) -> dict:
    """Training memory of ``net`` as currently frozen, at ``batch_size``; bytes (float32 throughout).

    ``analytic``: TinyTL's rules (``analysis.selection.memory.analytic_memory``); ``measured``: the
    bytes autograd actually saved for backward in one step (the hook the LM stages use). Per layer
    both; ``outside layers`` collects what no layer with a rule saved (the loss). Parameters,
    gradients (trained parameters) and SGD momentum (``momentum_buffers`` copies of them) complete it:
    ``extra_bytes`` = gradients + optimizer state + saved activations, the memory training needs
    beyond inference; ``training_bytes`` = parameters + gradients + optimizer state + the forward
    peak of activations (everything saved so far plus the live input, output and held shortcuts).
    ``measure=False`` skips the measured pass (the search calls this hundreds of times).
    """
    net = copy.deepcopy(net)  # a forward with batch statistics would move the running statistics
    set_training(net, True)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, *image_shape, generator=generator)
    y = torch.randint(0, num_classes, (batch_size,), generator=generator)
    step = lambda: F.cross_entropy(net(x), y)  # noqa: E731
    analytic = analytic_memory(net, step)
    measured = saved_for_backward(net, step) if measure else {"saved_bytes": 0, "by_module": {}}
    net.zero_grad(set_to_none=True)
    names = {row["layer"] for row in analytic["layers"]}
    per_layer_measured: dict[str, int] = {}
    for name, nbytes in measured["by_module"].items():
        owner = _owner(name, names) or "outside layers"
        per_layer_measured[owner] = per_layer_measured.get(owner, 0) + nbytes
    layers = [{**row, "measured_bytes": per_layer_measured.get(row["layer"], 0)} for row in analytic["layers"]]
    parameters = sum(p.numel() * p.element_size() for p in net.parameters())
    gradients = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    optimizer = momentum_buffers * gradients
    return {
        "batch_size": batch_size,
        "parameter_bytes": parameters,
        "trained_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "gradient_bytes": gradients,
        "optimizer_bytes": optimizer,
        "analytic_saved_bytes": analytic["saved_bytes"],
        "analytic_peak_bytes": analytic["peak_bytes"],
        "measured_saved_bytes": measured["saved_bytes"],
        "measured_outside_layers_bytes": per_layer_measured.get("outside layers", 0),
        "extra_bytes": gradients + optimizer + analytic["saved_bytes"],
        "measured_extra_bytes": gradients + optimizer + measured["saved_bytes"],
        "training_bytes": parameters + gradients + optimizer + analytic["peak_bytes"],
        "layers": layers,
    }
