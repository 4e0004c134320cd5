"""Builders for small M2D2 trees in both release forms, written byte for byte."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Blank lines separate documents; the last split ends without a trailing newline on purpose.
WIKI_TRAIN = "Title one\nFirst paragraph.\nSecond paragraph.\n\nTitle two\nOnly paragraph.\n\n"
WIKI_VALID = "Valid title\nValid paragraph.\n"
WIKI_TEST = "Test title\n  indented paragraph  \n\nLast one"
PAPER_TRAIN = "A paper\nAbstract\nWe measure $x$.\n1 Introduction\n$$ E = mc^2 $$\n\nSecond paper\nText.\n"


def write_domain_dir(root: Path, domain: str, splits: dict[str, str | bytes]) -> Path:
    directory = root / domain
    directory.mkdir(parents=True, exist_ok=True)
    for split, text in splits.items():
        data = text.encode("utf-8") if isinstance(text, str) else text
        (directory / f"{split}.txt").write_bytes(data)
    return directory


def write_domain_archive(root: Path, domain: str, splits: dict[str, str], prefix: str | None = None) -> Path:
    """``<domain>.tar.gz`` with members ``<prefix>/<split>.txt`` (prefix defaults to the domain)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{domain}.tar.gz"
    prefix = domain if prefix is None else prefix
    with tarfile.open(path, "w:gz") as tar:
        for split, text in splits.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"{prefix}/{split}.txt" if prefix else f"{split}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path




def tiny_lm_texts(n: int = 60, seed: int = 0) -> list[str]:
    """Short, repetitive English-like documents a tiny model learns quickly."""
    import random

    rng = random.Random(seed)
    nouns = ["model", "domain", "corpus", "token", "paper", "energy", "field", "river", "city", "law"]
    verbs = ["measures", "adapts", "reads", "predicts", "explains", "shows"]
    return [
        " ".join(f"The {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)}." for _ in range(6))
        for _ in range(n)
    ]


def save_tiny_gpt2(directory: Path, n_layer: int = 2, n_embd: int = 32, context: int = 32, seed: int = 0) -> Path:
    """A randomly initialised GPT-2 with a BPE tokenizer trained on ``tiny_lm_texts``, in HF format."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from analysis.lm.pretrain import train_tokenizer

    tokenizer = train_tokenizer(tiny_lm_texts(), vocab_size=300)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=context, n_embd=n_embd, n_layer=n_layer,
                        n_head=2, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
