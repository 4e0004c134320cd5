"""Strided sliding-window perplexity: every token scored exactly once, windows batched.

The split is the token stream of ``tokenize_domain`` (documents, each followed by EOS). One EOS is
prepended as the beginning-of-text token, so the stream's first token is scored too, conditioned on
it; every later document is conditioned on the previous document's EOS and, window permitting, on
the text before it (the stream is one text, as in the M2D2 and Hugging Face recipes). Scored: every
token of the stream, the EOS tokens included.

Windows of ``window`` tokens start every ``stride`` tokens. A window scores the targets after the
previous window's last target, so each target ``j`` is scored once, with the context ``x[begin:j]``
of the window that scores it: at least ``window - stride`` tokens once past the first window. A
window never starts after the token before its first target, so with ``stride == window`` windows
advance by ``window - 1``: disjoint in what they score, each target conditioned only on its own
window, none left unscored.
Token counts are exact: the mean is over scored targets, unlike the recipe that weights each window
by one more token than it scores. Windows of equal length are batched; only the scored positions go
through the output layer (``logits_to_keep``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Window:
    begin: int  # first input position (in the EOS-prefixed sequence)
    end: int  # one past the last input position
    first_target: int  # first scored target position; targets are first_target .. end - 1


def windows(length: int, window: int, stride: int) -> list[Window]:
    """Windows over a sequence of ``length`` positions whose targets 1 .. length - 1 are each scored once."""
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in 1..window ({window}), got {stride}")
    result, scored_until, begin = [], 1, 0
    while scored_until < length:
        end = min(begin + window, length)
        result.append(Window(begin, end, scored_until))
        scored_until = end
        # A target needs one token of context inside its window: never start past the next target's
        # predecessor (with stride == window, windows advance by window - 1 and share one token).
        begin = min(begin + stride, scored_until - 1)
    return result


@torch.inference_mode()
def token_nll(model, stream: np.ndarray, prefix_id: int, *, window: int, stride: int, batch_size: int = 8,
              device: str | torch.device = "cpu") -> np.ndarray:
    """Negative log-likelihood (nats, float64) of every token of ``stream``, in stream order."""
    sequence = torch.as_tensor(np.concatenate([[prefix_id], stream]), dtype=torch.long)
    nll = np.empty(len(stream), dtype=np.float64)
    planned = windows(len(sequence), window, stride)
    by_length: dict[int, list[Window]] = {}
    for w in planned:
        by_length.setdefault(w.end - w.begin, []).append(w)
    model.eval()
    for length, group in by_length.items():
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            inputs = torch.stack([sequence[w.begin : w.end] for w in batch]).to(device)
            # Positions that predict a scored target: first_target - 1 .. end - 2 within the window.
            keep = max(w.end - w.first_target for w in batch)
            logits = model(input_ids=inputs, logits_to_keep=keep + 1).logits[:, :-1].float()
            log_probs = torch.log_softmax(logits, dim=-1)  # (batch, keep, vocab): predictions of the last keep
            for row, w in enumerate(batch):
                n = w.end - w.first_target
                targets = sequence[w.first_target : w.end].to(device)
                picked = log_probs[row, keep - n :].gather(-1, targets[:, None])[:, 0]
                nll[w.first_target - 1 : w.end - 1] = -picked.double().cpu().numpy()
    return nll


def perplexities(nll: np.ndarray, words: int, n_bytes: int) -> dict:
    """Token, word and byte perplexity of the same total NLL (word and byte counts of the raw text)."""
    total = float(nll.sum())
    return {
        "tokens": int(len(nll)),
        "words": int(words),
        "bytes": int(n_bytes),
        "nll_sum": total,
        "token_perplexity": math.exp(total / len(nll)),
        "word_perplexity": math.exp(total / words),
        "byte_perplexity": math.exp(total / n_bytes),
        "bits_per_byte": total / n_bytes / math.log(2),
    }
