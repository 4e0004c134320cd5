"""Measured training memory: bytes saved for backward, by kind of operation, plus parameter state.

Activations, not weights, bound training memory on small devices: everything autograd keeps between
forward and backward. ``saved_for_backward`` runs one forward and backward pass under
``torch.autograd.graph.saved_tensors_hooks`` and counts every saved tensor's storage once (views of
one storage count once; parameter and buffer storage is excluded, it is there anyway). Each saved
tensor is attributed to the innermost module running when it was saved (``by_module``, by qualified
name; ``""`` is the model itself or code outside it, such as the loss), and that module's class to a
kind: linear inputs, attention, activation functions, normalisation, embedding, dropout masks,
loss/head, other.

``analytic_memory`` is the other half: what back-propagation *needs* to keep, from layer shapes and
TinyTL's rules (Cai et al., NeurIPS 2020), for any model built from standard layers or from layers
that state their own rule (``analytic_saved_bytes``):

* a linear or convolution layer keeps its input only if its weight is trained (a bias gradient is
  the output gradient itself);
* ReLU-like activations keep a 1-bit mask; smooth ones (sigmoid, tanh, h-swish, GELU, SiLU) keep
  their full input; both only when a gradient flows through them (something before them trains);
* batch norm with batch statistics keeps its input (and per-channel mean and inverse std); with
  running statistics it is a fixed affine map and keeps its input only if its scale is trained;
* a module with ``holds_input = True`` (a residual block) keeps its input alive until it returns,
  which counts towards the forward working set (``peak_bytes``), not towards what backward keeps.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

import torch
from torch import nn

KINDS = ("linear inputs", "attention", "activation functions", "normalisation", "embedding",
         "dropout masks", "loss/head", "checkpointed block inputs", "other")

_ACTIVATIONS = ("gelu", "relu", "silu", "swish", "tanh", "sigmoid", "activation", "mish", "hardswish")


def kind_of(module: nn.Module | None) -> str:
    if module is None:
        return "loss/head"
    name = type(module).__name__.lower()
    if isinstance(module, nn.Linear) or name in ("conv1d", "partialupdate") or "linear" in name:
        return "linear inputs"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return "linear inputs"
    if "attention" in name or "attn" in name:
        return "attention"
    if "norm" in name:
        return "normalisation"
    if any(a in name for a in _ACTIVATIONS):
        return "activation functions"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.Dropout):
        return "dropout masks"
    if hasattr(module, "get_output_embeddings") or "model" in name:
        return "loss/head"
    return "other"


def _storage_key(t: torch.Tensor) -> tuple[int, str]:
    storage = t.untyped_storage()
    return storage.data_ptr(), str(t.device)


class SavedTensorMeter:
    """Counts what autograd saves for backward while the ``with`` block runs (a forward pass).

    ``result()`` is ``{"saved_bytes": int, "by_kind": {kind: bytes}, "saved_tensors": int}``.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.by_kind: dict[str, int] = defaultdict(int)
        self.by_module: dict[str, int] = defaultdict(int)
        self.count = 0
        self._seen: set[tuple[int, str]] = set()
        self._stack: list[nn.Module] = []
        self._handles: list = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor):
        # A parameter is there anyway; under ZeRO-3 its gathered storage is new, so test the tensor too.
        if not isinstance(t, nn.Parameter) and not hasattr(t, "ds_id"):
            innermost = self._stack[-1] if self._stack else None
            self._count(t, kind_of(None if innermost is self.model else innermost), innermost)
        return t

    def _count(self, t: torch.Tensor, kind: str, module: nn.Module | None) -> None:
        key = _storage_key(t)
        if key not in self._parameters and key not in self._seen:
            self._seen.add(key)
            self.count += 1
            nbytes = t.untyped_storage().nbytes()
            self.by_kind[kind] += nbytes
            self.by_module[self._names.get(module, "")] += nbytes

    def __enter__(self) -> "SavedTensorMeter":
        self._parameters = {_storage_key(p) for p in self.model.parameters()}
        self._parameters |= {_storage_key(b) for b in self.model.buffers()}
        self._names = {module: name for name, module in self.model.named_modules()}

        def pre(module, args, kwargs):
            self._stack.append(module)
            # Under ZeRO-3 a module's parameters are gathered into fresh storage by DeepSpeed's own
            # pre-forward hook, which runs before this one: views of them (a transposed weight) are
            # parameters too.
            for p in module.parameters(recurse=False):
                if p.numel():
                    self._parameters.add(_storage_key(p))
            # Activation checkpointing keeps a block's inputs instead of what it saves inside (which
            # is recomputed in backward and never reaches these hooks): count the inputs.
            if (getattr(module, "gradient_checkpointing", False) and module.training
                    and torch.is_grad_enabled() and hasattr(module, "_gradient_checkpointing_func")):
                for value in (*args, *kwargs.values()):
                    if torch.is_tensor(value) and value.is_floating_point():
                        self._count(value, "checkpointed block inputs", module)

        def post(module, _args, _output):
            if self._stack and self._stack[-1] is module:
                self._stack.pop()

        for module in self.model.modules():
            self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            self._handles.append(module.register_forward_hook(post))
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def result(self) -> dict:
        return {"saved_bytes": int(sum(self.by_kind.values())),
                "by_kind": {k: int(self.by_kind.get(k, 0)) for k in KINDS},
                "by_module": {k: int(v) for k, v in self.by_module.items()},
                "saved_tensors": self.count}


def saved_for_backward(model: nn.Module, step: Callable[[], torch.Tensor]) -> dict:
    """Run ``step()`` (a forward returning a scalar loss) under a meter, then backward; the meter's result.

    Gradients are left in the parameters' ``.grad``; the caller zeroes them.
    """
    with SavedTensorMeter(model) as meter:
        loss = step()
    loss.backward()
    return meter.result()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's per-parameter state tensors (after at least one step)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.dim() > 0:
                total += value.numel() * value.element_size()
    return total


_MASK_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)
_SMOOTH_ACTIVATIONS = (nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus)


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def mask_bytes(t: torch.Tensor) -> int:
    """A 1-bit mask of ``t``, packed."""
    return math.ceil(t.numel() / 8)


def _trains(module: nn.Module, name: str) -> bool:
    p = getattr(module, name, None)
    return isinstance(p, torch.Tensor) and p.requires_grad


def rule_bytes(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int | None:
    """Bytes backward needs from ``module`` by TinyTL's rules; None when ``module`` has no rule of its own."""
    if hasattr(module, "analytic_saved_bytes"):
        return int(module.analytic_saved_bytes(x, y))
    flows = x.requires_grad
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        return tensor_bytes(x) if _trains(module, "weight") else 0
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        batch_statistics = module.training or module.running_mean is None
        if batch_statistics:
            trains = flows or _trains(module, "weight") or _trains(module, "bias")
            return tensor_bytes(x) + 2 * x.shape[1] * x.element_size() if trains else 0
        return tensor_bytes(x) if _trains(module, "weight") else 0
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return tensor_bytes(x) if flows or _trains(module, "weight") else 0
    if isinstance(module, _MASK_ACTIVATIONS):
        return mask_bytes(x) if flows else 0
    if isinstance(module, _SMOOTH_ACTIVATIONS):
        return tensor_bytes(x) if flows else 0
    if isinstance(module, nn.Dropout):
        return mask_bytes(x) if flows else 0
    return None


def analytic_memory(model: nn.Module, step: Callable[[], torch.Tensor]) -> dict:
    """Per-layer bytes backward needs, by TinyTL's rules, for one forward pass ``step()``.

    A layer with a rule (``rule_bytes``) is an entry; its children are not looked at. Returns
    ``{"layers": [{"layer", "type", "input_bytes", "output_bytes", "saved_bytes", "live_bytes"}, ...],
    "saved_bytes": total, "peak_bytes": max live}`` in forward order; ``live_bytes`` is what is alive
    while the layer runs: everything saved so far, its input and output, and inputs held by
    enclosing residual blocks (distinct storages counted once).
    """
    names = {module: name for name, module in model.named_modules()}
    layers: list[dict] = []
    held: list[torch.Tensor] = []
    state = {"saved": 0, "inside": None}
    handles = []

    def pre(module, args):
        if state["inside"] is not None:
            return
        if getattr(module, "holds_input", False):
            held.append(args[0])
        if rule_bytes_applies(module):
            state["inside"] = module

    def post(module, args, output):
        if state["inside"] is not None and state["inside"] is not module:
            return  # a child of a layer with a rule
        if state["inside"] is module:
            state["inside"] = None
            x = args[0]
            saved = rule_bytes(module, x, output)
            state["saved"] += saved
            live = {_storage_key(t): t.untyped_storage().nbytes() for t in (*held, x, output)}
            layers.append({"layer": names.get(module, ""), "type": type(module).__name__,
                           "input_bytes": tensor_bytes(x), "output_bytes": tensor_bytes(output),
                           "saved_bytes": saved, "live_bytes": state["saved"] + sum(live.values())})
        if getattr(module, "holds_input", False):
            held.pop()

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        with torch.enable_grad():
            step()
    finally:
        for handle in handles:
            handle.remove()
    return {"layers": layers, "saved_bytes": int(sum(layer["saved_bytes"] for layer in layers)),
            "peak_bytes": int(max((layer["live_bytes"] for layer in layers), default=0))}


def rule_bytes_applies(module: nn.Module) -> bool:
    """Whether ``module`` is a leaf of the accounting (it has a rule, so its children are not visited)."""
    return hasattr(module, "analytic_saved_bytes") or isinstance(module, (
        nn.Linear, nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
        *_MASK_ACTIVATIONS, *_SMOOTH_ACTIVATIONS, nn.Dropout))
