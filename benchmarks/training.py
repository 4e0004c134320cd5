"""Training throughput: the DeepSpeed path (analysis.lm.train.train) against a plain PyTorch loop.

    .venv/bin/python benchmarks/training.py [--steps 60] [--repeats 3] [--mode full] [--zero-stages 2]
    .venv/bin/python benchmarks/training.py --adam-parameters 100000000
    .venv/bin/python benchmarks/training.py --smoke   # 3 steps of 2 blocks, one run; AdamW over 1 M (make test)

Same model (the demo GPT-2 shape, random weights), same blocks in the same order, same AdamW,
schedule and gradient clipping, each with the model's own loss and with adaptation.loss: chunked
(analysis.lm.loss, which recomputes the logits in backward), so the DeepSpeed overhead and the cost of
not keeping the logits are told apart, and ZeRO stages (one process: the same arithmetic on flat
partitions) against ZeRO-0; runs are interleaved (plain, deepspeed, plain, ...) and medians of
tokens/s over the training steps are reported (the DeepSpeed figure is train()'s own train_seconds,
which includes its first-step memory measurement; evaluation is excluded from both).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import tempfile
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from analysis.lm.loss import causal_lm_loss
from analysis.lm.train import TrainSettings, lr_lambda, train
from analysis.selection.schemes import Scheme, apply_scheme

SHAPE = dict(n_layer=4, n_embd=128, n_head=4, vocab_size=4096, n_positions=128)


def model_for(mode: str):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**SHAPE, bos_token_id=0, eos_token_id=0))
    return apply_scheme(model, Scheme.from_config(mode, {}))


def plain_loop(blocks: np.ndarray, order: np.ndarray, settings: TrainSettings, mode: str, chunked: bool) -> float:
    model = model_for(mode)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, foreach=True)
    steps = len(order) // settings.micro_batch_size
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps, 0.0, "linear"))
    start = time.perf_counter()
    for step in range(steps):
        batch = torch.as_tensor(blocks[order[step * settings.micro_batch_size:(step + 1) * settings.micro_batch_size]],
                                dtype=torch.long)
        loss = causal_lm_loss(model, batch) if chunked else model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.gradient_clipping)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * settings.micro_batch_size * blocks.shape[1] / (time.perf_counter() - start)


def deepspeed_loop(blocks: np.ndarray, order: np.ndarray, settings: TrainSettings, mode: str, chunked: bool,
                   zero_stage: int = 0) -> float:
    settings = dataclasses.replace(settings, loss="chunked" if chunked else "model", zero_stage=zero_stage)
    with tempfile.TemporaryDirectory() as checkpoints:
        result = train(model_for(mode), blocks, order, {}, settings, checkpoint_dir=checkpoints,
                       fingerprint="bench", progress=False)
    return result["tokens_per_second"]


def adam_rates(parameters: int, repeats: int = 5) -> dict[str, float]:
    """Parameters updated per second by one AdamW step: DeepSpeed's CPU Adam (what optimizer offload
    runs on the host) and torch's foreach AdamW, on the same fp32 tensors."""
    from analysis.lm.ops import cpu_adam_class

    rates = {}
    for name in ("DeepSpeed CPU Adam", "torch AdamW (foreach)"):
        params = [torch.nn.Parameter(torch.randn(parameters // 8)) for _ in range(8)]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer = (cpu_adam_class()(params, lr=1e-4, adamw_mode=True) if name.startswith("DeepSpeed")
                     else torch.optim.AdamW(params, lr=1e-4, foreach=True))
        optimizer.step()  # allocates the moments
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - start)
        rates[name] = parameters / statistics.median(times)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--mode", default="full")
    parser.add_argument("--zero-stages", type=int, nargs="*", default=[2], choices=[1, 2, 3],
                        help="also time train() under these ZeRO stages (no offload), against ZeRO-0")
    parser.add_argument("--adam-parameters", type=int, default=0,
                        help="only time one AdamW step over this many parameters (CPU Adam and torch)")
    parser.add_argument("--smoke", action="store_true", help="3 steps of 2 blocks, one run; AdamW over 1 M")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    if args.smoke:
        args.steps, args.repeats, args.micro_batch, args.adam_parameters = 3, 1, 2, 1_000_000
    if args.adam_parameters:
        # Measured before the table is printed: DeepSpeed logs its accelerator on stdout when imported.
        rates = adam_rates(args.adam_parameters, repeats=1 if args.smoke else 5)
        print(f"One AdamW step over {args.adam_parameters / 1e6:.0f} M parameters, 2 threads\n")
        print("| optimizer | M parameters/s |")
        print("| --- | ---: |")
        for name, rate in rates.items():
            print(f"| {name} | {rate / 1e6:.1f} |")
        if not args.smoke:
            return
        print()
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, SHAPE["vocab_size"], (args.steps * args.micro_batch, SHAPE["n_positions"]))
    order = rng.permutation(len(blocks))
    # checkpoint_every larger than the run: no checkpoint is written (the plain loop writes none).
    settings = TrainSettings(learning_rate=3e-4, micro_batch_size=args.micro_batch, curve_points=2,
                             checkpoint_every=10 * args.steps)
    deepspeed_loop(blocks[: 2 * args.micro_batch], order[: 2 * args.micro_batch] % 2, settings, args.mode, False)
    runs = {"plain PyTorch, model loss": (plain_loop, False), "DeepSpeed train(), model loss": (deepspeed_loop, False),
            "plain PyTorch, chunked loss": (plain_loop, True), "DeepSpeed train(), chunked loss": (deepspeed_loop, True)}
    for stage in args.zero_stages:
        runs[f"DeepSpeed train(), model loss, ZeRO-{stage}"] = (
            lambda *a, stage=stage: deepspeed_loop(*a, zero_stage=stage), False)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (loop, chunked) in runs.items():
            rates[name].append(loop(blocks, order, settings, args.mode, chunked))
    print(f"demo GPT-2 shape {SHAPE}, mode {args.mode}, {args.steps} steps of {args.micro_batch} x "
          f"{SHAPE['n_positions']} tokens, {args.repeats} interleaved repeats, CPU threads 2\n")
    print("| loop | median tokens/s | runs |")
    print("| --- | ---: | --- |")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} |")
    print()
    median = {name: statistics.median(values) for name, values in rates.items()}
    for loss in ("model", "chunked"):
        print(f"ratio DeepSpeed / plain, {loss} loss: "
              f"{median[f'DeepSpeed train(), {loss} loss'] / median[f'plain PyTorch, {loss} loss']:.3f}")
    for stage in args.zero_stages:
        print(f"ratio ZeRO-{stage} / ZeRO-0 (DeepSpeed train(), model loss): "
              f"{median[f'DeepSpeed train(), model loss, ZeRO-{stage}'] / median['DeepSpeed train(), model loss']:.3f}")
    print(f"cost of the chunked loss (plain loops): "
          f"{median['plain PyTorch, chunked loss'] / median['plain PyTorch, model loss']:.3f}")


if __name__ == "__main__":
    main()
