"""Rule pretrain_base: a byte-level BPE tokenizer and a small GPT-2 trained from scratch, in HF format.

The offline demo has no hub model, so it builds its own "pretrained" model on its source corpus
(the corpus the similarity stage compares domains with). Downstream rules load the saved directory
with AutoModelForCausalLM / AutoTokenizer, exactly as they load gpt2 from the hub. A held-out share of
the corpus documents measures how well it was trained (the adaptation effects are only meaningful
on a model that has learnt its corpus).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from analysis.corpora.sources import ReadStats, iter_corpus
from analysis.io import atomic_dir, derive_seed, write_json
from analysis.lm.data import epoch_order, pack_blocks, tokenize_documents
from analysis.runner import restores_job_settings

# tokenizers, transformers and torch (with analysis.lm.train, which imports torch at its top) are
# imported inside the functions that use them: importing this module costs none of their start-up.

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A GPT-2-style byte-level BPE tokenizer (``<|endoftext|>`` as BOS, EOS and UNK)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS,
                                   unk_token=EOS, model_max_length=None)


@restores_job_settings()
def pretrain_base(
    *,
    corpus_spec: Mapping,
    shape: Mapping,
    context_length: int,
    output_dir: str | Path,
    metrics: str | Path,
    checkpoint_dir: str | Path,
    seed: int,
    threads: int = 2,
) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from analysis.lm.train import TrainSettings, train

    start = time.perf_counter()
    texts = [t for t in iter_corpus(corpus_spec, ReadStats()) if t.strip()]
    rng = np.random.default_rng(derive_seed(seed, "pretrain", "heldout"))
    heldout_mask = rng.random(len(texts)) < shape["heldout_fraction"]
    train_texts = [t for t, h in zip(texts, heldout_mask) if not h]
    heldout_texts = [t for t, h in zip(texts, heldout_mask) if h]
    tokenizer = train_tokenizer(train_texts, shape["vocab_size"])
    train_stream, _ = tokenize_documents(tokenizer, train_texts)
    heldout_stream, _ = tokenize_documents(tokenizer, heldout_texts)
    blocks, dropped = pack_blocks(train_stream, context_length)
    heldout_blocks, _ = pack_blocks(heldout_stream, context_length)
    log.info("%d training documents (%d tokens, %d blocks), %d held out (%d blocks); vocabulary %d",
             len(train_texts), len(train_stream), len(blocks), len(heldout_texts), len(heldout_blocks),
             len(tokenizer))

    torch.manual_seed(derive_seed(seed, "pretrain", "init"))
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=context_length, n_embd=shape["n_embd"],
                        n_layer=shape["n_layer"], n_head=shape["n_head"],
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    order = np.concatenate([epoch_order(len(blocks), derive_seed(seed, "pretrain", "epoch", str(e)))
                            for e in range(shape["epochs"])])
    settings = TrainSettings(learning_rate=shape["learning_rate"], warmup_fraction=shape["warmup_fraction"],
                             schedule="cosine", micro_batch_size=shape["micro_batch_size"],
                             weight_decay=0.01, curve_points=5, seed=derive_seed(seed, "pretrain", "steps"))
    result = train(model, blocks, order, {"heldout": heldout_blocks}, settings,
                   checkpoint_dir=checkpoint_dir, fingerprint=repr((dict(shape), context_length, seed)))
    heldout_loss = result["curves"][-1]["heldout_loss"]

    output_dir = Path(output_dir)
    with atomic_dir(output_dir) as tmp:
        result["module"].save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    record = {
        "documents": {"train": len(train_texts), "heldout": len(heldout_texts)},
        "tokens": {"train": int(len(train_stream)), "heldout": int(len(heldout_stream)),
                   "train_dropped": int(dropped)},
        "vocab_size": len(tokenizer),
        "parameters": int(sum(p.numel() for p in result["module"].parameters())),
        "epochs": shape["epochs"],
        "steps": result["steps"],
        "tokens_trained": result["tokens_trained"],
        "tokens_per_second": result["tokens_per_second"],
        "heldout_loss": heldout_loss,
        "heldout_perplexity": math.exp(heldout_loss),
        "unigram_perplexity": _unigram_perplexity(train_stream, heldout_stream, len(tokenizer)),
        "curves": result["curves"],
        "seconds": time.perf_counter() - start,
    }
    write_json(metrics, record)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    log.info("held-out perplexity %.2f (unigram baseline %.2f)", record["heldout_perplexity"],
             record["unigram_perplexity"])
    return record


def _unigram_perplexity(train_stream: np.ndarray, heldout_stream: np.ndarray, vocab: int) -> float:
    """Perplexity of an add-one unigram model: the floor a trained LM must clearly beat."""
    counts = np.bincount(train_stream, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[heldout_stream].mean()))
