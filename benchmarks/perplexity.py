"""Perplexity throughput: analysis.lm.perplexity against the Hugging Face docs' strided loop.

    .venv/bin/python benchmarks/perplexity.py [--tokens 60000] [--stride 64] [--repeats 3]
    .venv/bin/python benchmarks/perplexity.py --smoke   # a random 1-block GPT-2, 2,000 random ids (make test)

Model and text: the demo base model and a demo domain's test + valid token streams (run `make run`
first). The reference is a straightforward implementation of the docs' loop (one window per forward
pass, labels masked with -100, the model's own loss), with the token count made exact (the first
window scores one token fewer than it is weighted by in the docs); both give the same perplexity,
which is checked. Runs are interleaved and medians reported.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from analysis.lm.data import load_split
from analysis.lm.models import load_causal_lm, load_tokenizer
from analysis.lm.perplexity import token_nll


@torch.inference_mode()
def docs_loop(model, stream: np.ndarray, prefix: int, window: int, stride: int, device: str = "cpu") -> float:
    sequence = torch.as_tensor(np.concatenate([[prefix], stream]), dtype=torch.long, device=device)[None]
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, sequence.shape[1], stride):
        end = min(begin + window, sequence.shape[1])
        target_length = end - prev_end
        inputs = sequence[:, begin:end]
        labels = inputs.clone()
        labels[:, :-target_length] = -100
        scored = int((labels[:, 1:] != -100).sum())  # the model shifts labels: the first is never scored
        total += float(model(input_ids=inputs, labels=labels).loss) * scored
        count += scored
        prev_end = end
        if end == sequence.shape[1]:
            break
    assert count == len(stream)
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="results/models/tiny-gpt2/hf")
    parser.add_argument("--tokens-file", default="results/tokens/tiny-gpt2/keep/hep-ex.bin")
    parser.add_argument("--tokens", type=int, default=60000)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a random 1-block GPT-2 and 2,000 random ids, one run")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.smoke:
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=256, n_positions=args.window))
        prefix, args.repeats = 0, 1
        stream = np.random.default_rng(0).integers(0, 256, 2000)
    else:
        model = load_causal_lm(args.model)
        prefix = load_tokenizer(args.model).eos_token_id
        stream = np.concatenate([load_split(args.tokens_file, s) for s in ("test", "valid", "train")])[: args.tokens]
    model.eval()
    times: dict[str, list[float]] = {"docs loop": [], "ours": []}
    values = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        values["docs loop"] = docs_loop(model, stream, prefix, args.window, args.stride)
        times["docs loop"].append(time.perf_counter() - start)
        start = time.perf_counter()
        nll = token_nll(model, stream, prefix, window=args.window, stride=args.stride, batch_size=args.batch_size)
        values["ours"] = math.exp(nll.mean())
        times["ours"].append(time.perf_counter() - start)
    print(f"{len(stream)} tokens, window {args.window}, stride {args.stride}, batch {args.batch_size}, 2 threads, "
          f"median of {args.repeats}\n")
    print("| method | seconds | tokens/s | perplexity |")
    print("| --- | ---: | ---: | ---: |")
    for name in times:
        t = statistics.median(times[name])
        print(f"| {name} | {t:.2f} | {len(stream) / t:.0f} | {values[name]:.6f} |")
    ratio = statistics.median(times["docs loop"]) / statistics.median(times["ours"])
    rel = abs(values["ours"] - values["docs loop"]) / values["docs loop"]
    print(f"\nspeed-up {ratio:.2f}x, relative perplexity difference {rel:.1e}")
    if rel > 1e-4:
        raise SystemExit(f"the two loops disagree: relative perplexity difference {rel:.1e}")


if __name__ == "__main__":
    main()
