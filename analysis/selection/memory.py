"""Measured training memory: bytes saved for backward, by kind of operation, plus parameter state.

Activations, not weights, bound training memory on small devices: everything autograd keeps between
forward and backward. ``saved_for_backward`` runs one forward and backward pass under
``torch.autograd.graph.saved_tensors_hooks`` and counts every saved tensor's storage once (views of
one storage count once; parameter storage is excluded, it is there anyway). Each saved tensor is
attributed to the innermost module running when it was saved, and that module's class to a kind:
linear inputs, attention, activation functions, normalisation, embedding, dropout masks, loss/head,
other.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from torch import nn

KINDS = ("linear inputs", "attention", "activation functions", "normalisation", "embedding",
         "dropout masks", "loss/head", "other")

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
        self.count = 0
        self._seen: set[tuple[int, str]] = set()
        self._stack: list[nn.Module] = []
        self._handles: list = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor):
        key = _storage_key(t)
        if key not in self._parameters and key not in self._seen:
            self._seen.add(key)
            self.count += 1
            innermost = self._stack[-1] if self._stack else None
            self.by_kind[kind_of(None if innermost is self.model else innermost)] += t.untyped_storage().nbytes()
        return t

    def __enter__(self) -> "SavedTensorMeter":
        self._parameters = {_storage_key(p) for p in self.model.parameters()}

        def pre(module, _args):
            self._stack.append(module)

        def post(module, _args, _output):
            if self._stack and self._stack[-1] is module:
                self._stack.pop()

        for module in self.model.modules():
            self._handles.append(module.register_forward_pre_hook(pre))
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
