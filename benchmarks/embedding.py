"""Embedding throughput: analysis.similarity.embed_texts against plain SentenceTransformer.encode.

    .venv/bin/python benchmarks/embedding.py [--texts 1200] [--repeats 3] [--tokens-per-batch 2048 4096]
    .venv/bin/python benchmarks/embedding.py --smoke   # 40 texts of the demo generator, one run (make test)

Same texts, same model, same threads; runs are interleaved (encode, ours, encode, ours, ...) so that
machine noise hits both, and medians are reported. Also measures this CPU's fp32 matmul FLOP/s and
the fraction of it the model's forward pass reaches (analytic FLOPs per token from the model config).
Texts: the demo samples (run `make run` first) or --parquet files.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import time

import numpy as np
import pyarrow.parquet as pq
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from analysis.similarity.embedding import embed_texts, load_model  # noqa: E402


def matmul_flops(size: int = 1024, seconds: float = 3.0) -> float:
    """Sustained fp32 FLOP/s of torch.mm on square matrices (best of repeated timings)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        torch.mm(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b)
        best = max(best, 10 * 2 * size**3 / (time.perf_counter() - start))
    return best


def forward_flops(config, lengths: np.ndarray) -> float:
    """Multiply-add FLOPs of a BERT-style encoder over sequences of ``lengths`` tokens (no padding)."""
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = layers * 2 * (4 * h * h + 2 * h * f)  # Q, K, V, O projections and the MLP
    attention = layers * 2 * 2 * h * float((lengths.astype(np.float64) ** 2).sum())  # QK^T and AV
    return per_token * float(lengths.sum()) + attention


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens-per-batch", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--parquet", nargs="*", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="40 texts of the demo generator, one run")
    args = parser.parse_args()

    if args.smoke:
        from analysis.corpora.demo import source_corpus_lines

        texts = [line for line in source_corpus_lines(20, 1) if line.strip()][:40]
        args.repeats, args.tokens_per_batch = 1, [2048]
    else:
        files = args.parquet or sorted(glob.glob("results/samples/sources/*.parquet")) + sorted(
            glob.glob("results/samples/domains/*.parquet")
        )
        texts = []
        for path in files:
            texts += pq.read_table(path, columns=["text"]).column("text").to_pylist()
        texts = texts[:: max(1, len(texts) // args.texts)][: args.texts]
        if not texts:
            parser.error("no texts: run `make run` first (results/samples/*/*.parquet), or give --parquet")
    model = load_model("all-MiniLM-L6-v2", device=args.device)
    tokens = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    lengths = np.array([len(t) for t in tokens])
    flops = forward_flops(model[0].auto_model.config, lengths)
    peak = matmul_flops(seconds=0.3 if args.smoke else 3.0) if args.device == "cpu" else float("nan")
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {len(texts)} texts, "
          f"{lengths.sum()} tokens (mean {lengths.mean():.0f}, max {lengths.max()}), "
          f"forward {flops / 1e9:.1f} GFLOP; matmul peak {peak / 1e9:.1f} GFLOP/s\n")

    timings: dict[str, list[float]] = {"encode (default)": []}
    timings.update({f"embed_texts {b}": [] for b in args.tokens_per_batch})
    reference = model.encode(texts[:8], normalize_embeddings=True)  # warm-up
    for _ in range(args.repeats):
        start = time.perf_counter()
        reference = model.encode(texts, normalize_embeddings=True)
        timings["encode (default)"].append(time.perf_counter() - start)
        for budget in args.tokens_per_batch:
            ours, stats = embed_texts(model, texts, tokens_per_batch=budget)
            timings[f"embed_texts {budget}"].append(stats.seconds)
            assert np.abs(ours - reference).max() < 1e-5

    base = statistics.median(timings["encode (default)"])
    print("| method | median s | texts/s | tokens/s | GFLOP/s | of peak | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, values in timings.items():
        t = statistics.median(values)
        print(f"| {name} | {t:.2f} | {len(texts) / t:.1f} | {lengths.sum() / t:.0f} | {flops / t / 1e9:.1f} | "
              f"{flops / t / peak:.1%} | {base / t:.2f} |")
    print("\nlargest abs(ours - encode) < 1e-5 on every run")


if __name__ == "__main__":
    main()
