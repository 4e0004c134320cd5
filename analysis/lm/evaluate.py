"""Rules zero_shot and evaluate: perplexity of a model on one domain, and token-level NLL.

Outputs ``results/eval/<model>/zero_shot/<domain>.{json,npz}`` for the base model and
``results/eval/<model>/<join policy>/<mode>/<domain>.{json,npz}`` for a model adapted in a mode on
text joined under a policy (the saved model for ``full``, otherwise the base model with the trained
delta applied).

* The JSON holds token, word and byte perplexity of the configured split (the evaluated text is the
  split under ``evaluation.join_policy``; see ``analysis.lm.perplexity`` for what is scored), the
  window, stride, prefix and precision used, and a summary of the token-level chunks.
* The npz holds, for each token-level split, ``<split>_starts`` (chunk offsets in that split's token
  stream), ``<split>_ids`` (int32, chunks x (chunk_tokens - 1): the predicted tokens) and
  ``<split>_nll`` (float32, same shape, nats). A chunk's first token is context only. The chunks
  depend on the token stream and the seed alone, so the zero-shot and every adapted model score the
  same tokens.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from analysis.errors import PipelineError
from analysis.io import atomic_path, derive_seed, write_json
from analysis.lm.data import load_split
from analysis.lm.models import apply_delta, load_causal_lm
from analysis.runner import restores_job_settings

log = logging.getLogger(__name__)


def sample_chunks(length: int, n_chunks: int, chunk_tokens: int, seed: int) -> tuple[np.ndarray, int]:
    """Sorted start offsets of up to ``n_chunks`` disjoint chunks of a stream of ``length`` tokens.

    The stream is cut into consecutive slots of the chunk size from a random offset and slots are
    drawn without replacement; a stream shorter than one chunk gives one chunk of the whole stream.
    Returns ``(starts, size)``.
    """
    if length < 2:
        return np.zeros(0, dtype=np.int64), 0
    size = min(chunk_tokens, length)
    rng = np.random.default_rng(seed)
    slots = length // size
    offset = int(rng.integers(0, length - slots * size + 1))
    chosen = rng.choice(slots, size=min(n_chunks, slots), replace=False)
    return np.sort(offset + chosen.astype(np.int64) * size), size


def load_model(model_spec: Mapping, weights: str | Path | None, dtype: str):
    """The base model (``weights`` None), a saved full model, or the base with a delta applied."""
    if weights is None:
        return load_causal_lm(model_spec["name_or_path"], dtype=dtype)
    weights = Path(weights)
    if (weights / "config.json").is_file():
        return load_causal_lm(str(weights), dtype=dtype)
    if (weights / "delta.safetensors").is_file():
        return apply_delta(load_causal_lm(model_spec["name_or_path"], dtype=dtype), weights)
    raise PipelineError(f"{weights}: neither a saved model (config.json) nor a delta (delta.safetensors)")


def _window(model, requested: int | None, context_length: int, stride: int | None) -> tuple[int, int]:
    window = requested or context_length
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and window > limit:
        raise PipelineError(f"evaluation.window = {window} exceeds the model's {limit} positions")
    stride = stride or max(1, window // 2)
    if stride > window:
        raise PipelineError(f"evaluation.stride = {stride} is larger than the window ({window})")
    return window, stride


@restores_job_settings()
def evaluate(
    *,
    model_key: str,
    model_spec: Mapping,
    stage: str,
    domain: str,
    portion: str,
    tokens: str | Path,
    tokens_metadata: str | Path,
    output_json: str | Path,
    output_npz: str | Path,
    evaluation: Mapping,
    seed: int,
    train_policy: str | None = None,
    weights: str | Path | None = None,
    adapt_metrics: str | Path | None = None,
    threads: int = 1,
) -> dict:
    """Score ``domain``'s evaluation split with the base model (``weights`` None, rule zero_shot) or an
    adapted one (``weights``: a saved model or a delta, rule evaluate; ``adapt_metrics``, its adapt
    job's metrics.json, adds what it was trained on: tokens, the cap, the share of an epoch).

    Writes ``output_json`` (token, word and byte perplexity over ``evaluation.split`` by strided
    windows, with what was scored and how fast) and ``output_npz`` (token-level NLL of seeded disjoint
    chunks of each split in ``evaluation.token_level.splits``, with the predicted token ids).
    ``stage`` is ``zero_shot`` or the adaptation mode; ``train_policy`` the join policy the weights
    were trained on. Returns what ``output_json`` holds.
    """
    # torch is imported here, not at the top, and with it the modules that import it at theirs
    # (perplexity, train): importing this module should not cost torch's start-up.
    import torch

    from analysis.lm.perplexity import perplexities, token_nll, total_nll
    from analysis.lm.train import resolve_precision

    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(model_spec["dtype"], device)
    model = load_model(model_spec, weights, precision).to(device)
    window, stride = _window(model, evaluation["window"], model_spec["context_length"], evaluation["stride"])
    meta = json.loads(Path(tokens_metadata).read_text(encoding="utf-8"))
    # The beginning-of-text token: BOS where the tokenizer has one (LLaMA), else EOS (GPT-2's only
    # special token, which also ends every document in the stream).
    prefix_id = meta.get("bos_token_id")
    prefix_id, prefix = (prefix_id, "bos") if prefix_id is not None else (meta["eos_token_id"], "eos")
    scoring = dict(window=window, stride=stride, batch_size=evaluation["batch_size"], device=device)

    split = evaluation["split"]
    stream = load_split(tokens, split)  # memory-mapped: windows are read as they are scored
    if len(stream) == 0:
        raise PipelineError(f"{tokens}: split {split!r} of {domain!r} has no tokens to evaluate")
    scored_at = time.perf_counter()
    nll_sum, scored = total_nll(model, stream, prefix_id, **scoring)
    split_seconds = time.perf_counter() - scored_at
    counts = meta["splits"][split]
    result = {
        "model": model_key, "stage": stage, "train_policy": train_policy, "domain": domain, "portion": portion,
        "model_path": model_spec["name_or_path"], "weights": None if weights is None else str(weights),
        "split": split, "eval_policy": meta["join_policy"], "window": window, "stride": stride,
        "prefix": prefix, "prefix_token_id": int(prefix_id), "precision": precision, "device": device.type,
        # A token perplexity above this is worse than guessing uniformly over the vocabulary.
        "vocab_size": int(model.config.vocab_size),
        **perplexities(nll_sum, scored, counts["words"], counts["bytes"]),
        "mean_nll": nll_sum / scored,
        "tokens_per_second": scored / split_seconds,
    }
    if adapt_metrics is not None:
        # What the adapted model was trained on (its adapt job's metrics.json): the tables show it, so
        # a capped run (adaptation.max_train_tokens) is never read as one epoch.
        trained = json.loads(Path(adapt_metrics).read_text(encoding="utf-8"))
        result.update(train_tokens=trained["tokens_trained"], max_train_tokens=trained.get("max_train_tokens"),
                      epoch_fraction=trained.get("epoch_fraction", 1.0))
    log.info("%s / %s / %s: %s perplexity %.4f over %d tokens (%.0f tokens/s)", model_key, stage, domain, split,
             result["token_perplexity"], scored, result["tokens_per_second"])

    level = evaluation["token_level"]
    arrays, chunks = {}, {}
    for name in level["splits"]:
        stream = load_split(tokens, name)
        starts, size = sample_chunks(len(stream), level["chunks"], level["chunk_tokens"],
                                     derive_seed(seed, "chunks", model_key, domain, name))
        ids = np.zeros((len(starts), max(size - 1, 0)), dtype=np.int32)
        values = np.zeros(ids.shape, dtype=np.float32)
        for row, begin in enumerate(starts):
            chunk = np.asarray(stream[begin : begin + size], dtype=np.int64)
            ids[row] = chunk[1:]
            values[row] = token_nll(model, chunk[1:], int(chunk[0]), **scoring)
        arrays[f"{name}_starts"], arrays[f"{name}_ids"], arrays[f"{name}_nll"] = starts, ids, values
        chunks[name] = {"chunks": int(len(starts)), "chunk_tokens": int(size), "tokens_scored": int(ids.size),
                        "mean_nll": float(values.mean()) if values.size else float("nan")}
        if len(starts) < level["chunks"]:
            log.warning("%s %s: %d tokens hold only %d disjoint chunks of %d (asked for %d)", domain, name,
                        len(stream), len(starts), size, level["chunks"])
    result["token_level"] = chunks
    result["seconds"] = time.perf_counter() - start
    with atomic_path(output_npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    write_json(output_json, result)
    return result
