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
from typing import Iterator

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


def _window_ids(stream: np.ndarray, prefix_id: int, begin: int, end: int) -> np.ndarray:
    """Positions ``begin .. end - 1`` of the prefixed sequence ``[prefix_id, *stream]`` as int64, read
    from ``stream`` (a memory map: only the window is read)."""
    if begin == 0:
        return np.concatenate([[prefix_id], np.asarray(stream[: end - 1], dtype=np.int64)])
    return np.asarray(stream[begin - 1 : end - 1], dtype=np.int64)


@torch.inference_mode()
def window_nll(model, stream: np.ndarray, prefix_id: int, *, window: int, stride: int, batch_size: int = 8,
               device: str | torch.device = "cpu") -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, nll)`` for batches of windows: the NLL (nats, float64) of the stream's tokens
    ``offset .. offset + len(nll) - 1``. Every token is scored once; windows are read from ``stream``
    as they are scored, so a memory-mapped stream is never loaded whole."""
    planned = windows(len(stream) + 1, window, stride)
    by_length: dict[int, list[Window]] = {}
    for w in planned:
        by_length.setdefault(w.end - w.begin, []).append(w)
    model.eval()
    for length, group in by_length.items():
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            inputs = torch.as_tensor(np.stack([_window_ids(stream, prefix_id, w.begin, w.end) for w in batch]),
                                     device=device)
            # Positions that predict a scored target: first_target - 1 .. end - 2 within the window.
            keep = max(w.end - w.first_target for w in batch)
            logits = model(input_ids=inputs, logits_to_keep=keep + 1).logits[:, :-1].float()
            log_probs = torch.log_softmax(logits, dim=-1)  # (batch, keep, vocab): predictions of the last keep
            for row, w in enumerate(batch):
                n = w.end - w.first_target
                targets = inputs[row, w.first_target - w.begin :]
                picked = log_probs[row, keep - n :].gather(-1, targets[:, None])[:, 0]
                yield w.first_target - 1, -picked.double().cpu().numpy()


def token_nll(model, stream: np.ndarray, prefix_id: int, *, window: int, stride: int, batch_size: int = 8,
              device: str | torch.device = "cpu") -> np.ndarray:
    """Negative log-likelihood (nats, float64) of every token of ``stream``, in stream order."""
    nll = np.empty(len(stream), dtype=np.float64)
    for offset, values in window_nll(model, stream, prefix_id, window=window, stride=stride,
                                     batch_size=batch_size, device=device):
        nll[offset : offset + len(values)] = values
    return nll


def total_nll(model, stream: np.ndarray, prefix_id: int, *, window: int, stride: int, batch_size: int = 8,
              device: str | torch.device = "cpu") -> tuple[float, int]:
    """The summed NLL (nats) of every token of ``stream`` and their count, in memory that does not
    grow with the stream (``token_nll`` keeps 8 bytes per token)."""
    total, count = 0.0, 0
    for _, values in window_nll(model, stream, prefix_id, window=window, stride=stride, batch_size=batch_size,
                                device=device):
        total += float(values.sum())
        count += len(values)
    return total, count


def perplexities(nll_sum: float, tokens: int, words: int, n_bytes: int) -> dict:
    """Token, word and byte perplexity of the same total NLL (word and byte counts of the raw text)."""
    return {
        "tokens": int(tokens),
        "words": int(words),
        "bytes": int(n_bytes),
        "nll_sum": float(nll_sum),
        "token_perplexity": math.exp(nll_sum / tokens),
        "word_perplexity": math.exp(nll_sum / words),
        "byte_perplexity": math.exp(nll_sum / n_bytes),
        "bits_per_byte": nll_sum / n_bytes / math.log(2),
    }
