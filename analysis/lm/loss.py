"""Next-token loss without keeping the logits for backward.

A causal LM's usual loss keeps the softmax of the full logits, ``tokens x vocabulary`` floats, for
backward: 206 MB per 1024-token GPT-2 sequence, more than the activations of the last two blocks
together. ``ChunkedCrossEntropy`` keeps only the final hidden states (``tokens x hidden``) and the
labels, and recomputes the logits chunk by chunk in backward. The loss and the gradients are the
same as ``model(input_ids, labels=input_ids).loss`` (tested to 1e-6); it costs one more head matmul
(measured: -9% tokens/s on the demo model, whose head is 40% of its FLOPs; benchmarks/training.py),
so it is opt-in: ``adaptation.loss: chunked``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross entropy of ``hidden @ weight^T (+ bias)`` against ``labels``, in chunks of rows."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_rows):
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_rows):
            logits = F.linear(hidden[start : start + chunk_rows], weight, bias).float()
            total = total + F.cross_entropy(logits, labels[start : start + chunk_rows], reduction="sum")
        ctx.save_for_backward(hidden, weight, bias, labels)
        ctx.chunk_rows = chunk_rows
        return total / hidden.shape[0]

    @staticmethod
    def backward(ctx, grad_output):
        hidden, weight, bias, labels = ctx.saved_tensors
        n = hidden.shape[0]
        scale = grad_output / n
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        for start in range(0, n, ctx.chunk_rows):
            rows = hidden[start : start + ctx.chunk_rows]
            probabilities = torch.softmax(F.linear(rows, weight, bias).float(), dim=-1)
            probabilities[torch.arange(len(rows)), labels[start : start + ctx.chunk_rows]] -= 1.0
            grad_logits = (probabilities * scale).to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + ctx.chunk_rows] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += grad_logits.T @ rows
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        return grad_hidden, grad_weight, grad_bias, None, None


def supports_chunked_loss(model) -> bool:
    """Whether the loss can be computed from the last hidden state and the output layer alone."""
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (
        head is not None
        and isinstance(head, torch.nn.Linear)
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) is None
    )


def causal_lm_loss(model, input_ids: torch.Tensor, chunk_rows: int = 2048, module=None) -> torch.Tensor:
    """Mean next-token loss of ``input_ids`` (batch, tokens), as the model's own loss computes it.

    ``model`` is what is called (a DeepSpeed engine, say); ``module`` the model it wraps, if any.
    """
    module = model if module is None else module
    if not supports_chunked_loss(module):
        return model(input_ids=input_ids, labels=input_ids).loss
    outputs = model(input_ids=input_ids, output_hidden_states=True, logits_to_keep=1)
    hidden = outputs.hidden_states[-1][:, :-1]
    head = module.get_output_embeddings()
    return ChunkedCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias,
                                     input_ids[:, 1:].reshape(-1), chunk_rows)


LOSSES = ("model", "chunked")


def forward_loss(model, input_ids: torch.Tensor, loss: str = "model", module=None) -> torch.Tensor:
    """The training loss: the model's own (``model``) or ``causal_lm_loss`` (``chunked``)."""
    if loss == "chunked":
        return causal_lm_loss(model, input_ids, module=module)
    if loss == "model":
        return model(input_ids=input_ids, labels=input_ids).loss
    raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
