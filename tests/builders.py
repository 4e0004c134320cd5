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


def awkward_lines(n: int, seed: int = 0) -> list[str]:
    """Lines of an M2D2 split at its most awkward for a tokenizer: runs of blank lines, leading and
    trailing spaces and tabs, very long lines, non-ASCII (accents, CJK, Cyrillic, emoji, combining
    marks, no-break and ideographic spaces), carriage returns, LaTeX, and special-token strings."""
    import random

    rng = random.Random(seed)
    words = ["the", "of", "Paris", "naïve", "café", "über", "東京", "данные", "x²", "—", "(1999)", "e.g.",
             "'s", "don't", "3.14", "$x^2$", "\\alpha", "😀", "e\u0301", "\u0301", "ﬁ", "a\u00a0b",
             "\u3000", "<|endoftext|>", "</s>", "Ā", "\t", "\r"]
    ends = ["", ".", ":", "!", " ", "  ", "\u00a0", "\r", "\t"]
    starts = ["", "", "", " ", "   ", "\t", "\u3000", "\u0301", "(", "'"]
    lines = []
    for _ in range(n):
        k = rng.random()
        if k < 0.15:
            lines.extend([""] * rng.randint(1, 4))
        elif k < 0.2:
            lines.append(" " * rng.randint(1, 3))
        else:
            length = rng.randint(200, 600) if k < 0.24 else rng.randint(1, 25)
            lines.append(rng.choice(starts) + " ".join(rng.choice(words) for _ in range(length)) + rng.choice(ends))
    return lines


def gpt2_style_tokenizer(texts: list[str], vocab_size: int = 600):
    """A byte-level BPE built as GPT-2's (ByteLevel pre-tokenizer, GPT-2 regex, no prefix space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def olmo_style_tokenizer(texts: list[str], vocab_size: int = 600):
    """A GPT-NeoX-style byte-level BPE as OLMo's: NFC normaliser, ByteLevel pre-tokenizer, and the
    PII-mask added tokens of Dolma."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_tokens([AddedToken("|||EMAIL_ADDRESS|||", normalized=False),
                          AddedToken("|||PHONE_NUMBER|||", normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|padding|>")


def llama_style_tokenizer(texts: list[str], vocab_size: int = 900, newline_merges: bool = False,
                          metaspace: bool = False):
    """A BPE built as LLaMA's tokenizer.json: Prepend("▁") + Replace(" ", "▁") normaliser, no
    pre-tokenizer, byte fallback (the 256 <0x..> tokens), trained on lines so that, as in LLaMA's
    vocabulary, no token holds a newline; ``newline_merges`` trains on whole texts instead, so that
    tokens join newlines to other characters. ``metaspace``: the newer form of the same tokenizer
    (transformers' non-legacy Llama tokenizers), a Metaspace pre-tokenizer that prepends "▁" to the
    first section only and does not split, and no normaliser."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    if metaspace:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
                                  show_progress=False)
    lines = texts if newline_merges else [line for text in texts for line in text.split("\n") if line]
    tokenizer.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def transfer_training(**changes):
    """Edge training settings: the schema's edge.transfer defaults with ``changes``."""
    from analysis.config import schema_defaults, settings_from
    from analysis.edge.train import TrainSettings

    return settings_from(TrainSettings, schema_defaults("edge.transfer"), **changes)
