"""Bytes saved for backward per adaptation mode, by kind of operation.

    .venv/bin/python benchmarks/memory.py [--models demo gpt2-small] [--batch 1]
    .venv/bin/python benchmarks/memory.py --smoke   # a 2-block GPT-2 of 64 tokens, both losses (make test)

For each model shape (random weights from a config: the numbers depend on shapes, not on values)
and each mode, one forward pass of ``batch`` blocks of the model's context length runs under
analysis.selection.SavedTensorMeter, then backward. Reported: MiB saved for backward, the ratio
full / mode, the breakdown by kind, and trainable-parameter + optimizer-state MiB (AdamW: two fp32
moments per trainable parameter). Schemes are the config defaults (sparse: biases of the last 2
blocks, 25% of the input channels of the last block's c_attn and c_fc). Each model is measured with
HF's own loss (which keeps the logits' softmax for backward) and with analysis.lm.loss (which keeps
the last hidden state and recomputes the logits in chunks; what the training loop uses).
"""

from __future__ import annotations

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from analysis.lm.loss import causal_lm_loss
from analysis.selection.memory import KINDS, saved_for_backward
from analysis.selection.schemes import Scheme, apply_scheme

SHAPES = {
    # The demo base model of config.yaml.
    "demo": dict(n_layer=4, n_embd=128, n_head=4, vocab_size=4096, n_positions=128),
    # GPT-2 small (124M): the smallest model of the paper.
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
    # --smoke: seconds, every mode and kind of saved tensor.
    "smoke": dict(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64),
}
OPTIONS = {
    "last": {"blocks": 1},
    "norm_last": {"blocks": 1},
    "lora": {"rank": 8, "alpha": 16, "target_modules": ["c_attn"]},
    "sparse": {"n_bias_update": 2, "weight_update": {"-1.mlp.c_fc": 0.25, "-1.attn.c_attn": 0.25}},
}
MODES = ["full", "bias", "last", "norm_last", "lora", "sparse"]
MIB = 2**20


def measure(shape: dict, mode: str, batch: int, loss: str) -> tuple[dict, int]:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**shape, bos_token_id=0, eos_token_id=0))
    model = apply_scheme(model, Scheme.from_config(mode, OPTIONS))
    model.train()
    x = torch.randint(0, shape["vocab_size"], (batch, shape["n_positions"]))
    if loss == "chunked":
        result = saved_for_backward(model, lambda: causal_lm_loss(model, x))
    else:
        result = saved_for_backward(model, lambda: model(input_ids=x, labels=x).loss)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return result, trainable


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["demo", "gpt2-small"], choices=list(SHAPES))
    parser.add_argument("--smoke", action="store_true", help="the smoke shape only")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--loss", nargs="+", default=["model", "chunked"],
                        help="model: HF's loss (keeps the logits); chunked: analysis.lm.loss (what train uses)")
    args = parser.parse_args()
    if args.smoke:
        args.models = ["smoke"]
    torch.set_num_threads(2)
    for name, loss in [(m, l) for m in args.models for l in args.loss]:
        shape = SHAPES[name]
        print(f"\n## {name}, {loss} loss: {shape}, batch {args.batch} x {shape['n_positions']} tokens\n")
        # One column per kind the meter knows (analysis.selection.memory.KINDS), named as it names them.
        print("| mode | saved MiB | full / mode | " + " | ".join(KINDS) + " | params+grad+Adam MiB |")
        print("|---|---|---|" + "---|" * len(KINDS) + "---|")
        full = None
        for mode in MODES:
            result, trainable = measure(shape, mode, args.batch, loss)
            saved = result["saved_bytes"]
            full = full or saved
            kinds = " | ".join(f"{result['by_kind'][k] / MIB:.1f}" for k in KINDS)
            print(f"| {mode} | {saved / MIB:.1f} | {full / saved:.2f}x | {kinds} | {4 * trainable / MIB:.1f} |")


if __name__ == "__main__":
    main()
