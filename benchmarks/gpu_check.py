"""GPU check of the adaptation path (issue 15, part 5): one script, one Markdown table.

    bash benchmarks/gpu_check.sh            # on the GPU machine: installs missing wheels, then runs this
    python benchmarks/gpu_check.py          # the checks themselves (about 6 minutes on an H100/H200)
    python benchmarks/gpu_check.py --cpu-smoke   # here, without a GPU: the same code on tiny shapes

No hub access: every model is random-initialised from a config (GPT-2 small, the GPT-2 xl shape, a
LLaMA-style ~1B shape) and saved in Hugging Face format with a small BPE tokenizer; the token
streams are random ids in the token-file layout the pipeline writes. Rows:

1. **adapt, bf16**: GPT-2 small and the LLaMA-style 1B, one epoch through the rule's own launcher
   (``workflow/scripts/adapt.py`` with the JSON spec the rule builds; ``deepspeed --num_gpus N`` when
   ``--gpus`` > 1): tokens/s, model FLOPs utilisation (6 x parameters x tokens/s over the GPU's
   dense bf16 peak), peak allocated memory against the plan's device estimate.
2. **ZeRO-3 + offload** of the largest shape (GPT-2 xl): a few steps with optimizer and parameter
   offload: peak allocated against the plan.
3. **perplexity**: ``analysis.lm.perplexity``'s engine against the Hugging Face docs' strided loop
   (benchmarks/perplexity.py) on the same GPU, GPT-2 small, bf16: tokens/s of each.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    "gpt2-small": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
                   "n_positions": 1024},
    "gpt2-xl": {"model_type": "gpt2", "n_layer": 48, "n_embd": 1600, "n_head": 25, "vocab_size": 50257,
                "n_positions": 1024},
    "llama-1b": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                 "max_position_embeddings": 2048, "tie_word_embeddings": False},
}
SMOKE_SHAPES = {
    "gpt2-small": {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 512,
                   "n_positions": 64},
    "gpt2-xl": {"model_type": "gpt2", "n_layer": 3, "n_embd": 96, "n_head": 2, "vocab_size": 512, "n_positions": 64},
    "llama-1b": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 512,
                 "max_position_embeddings": 64, "tie_word_embeddings": False},
}
#: Dense bf16 peak FLOP/s by GPU name (vendor data sheets, without sparsity).
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A6000": 155e12}


def gpu_peak(name: str) -> float:
    for key, value in PEAKS.items():
        if key in name.upper():
            return value
    return float("nan")


def save_model(directory: Path, spec: dict) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from analysis.lm.pretrain import train_tokenizer

    spec = dict(spec)
    tokenizer = train_tokenizer([f"text number {i} of the check, with words and more words" for i in range(200)],
                                vocab_size=300)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, bos_token_id=tokenizer.eos_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tokens(stem: Path, vocab: int, train_tokens: int, eval_tokens: int) -> Path:
    import numpy as np

    from analysis.lm.tokens import TokenWriter, token_dtype

    rng = np.random.default_rng(0)
    with TokenWriter(stem, token_dtype(vocab)) as writer:
        for split, n in (("train", train_tokens), ("valid", eval_tokens), ("test", eval_tokens)):
            writer.begin_split(split)
            for start in range(0, n, 1 << 20):
                size = min(1 << 20, n - start)
                writer.append(rng.integers(0, vocab, size), [0])
            writer.end_split()
        writer.commit({"model": "gpu-check", "policy": "keep", "domain": "random"})
    return stem.with_suffix(".bin")


def model_spec(model_dir: Path, context: int, micro_batch: int, accumulation: int = 1, **setting) -> dict:
    return {"name_or_path": str(model_dir), "learning_rate": 5e-5, "corpus": "none", "context_length": context,
            "dtype": "auto", "micro_batch_size": micro_batch, "gradient_accumulation_steps": accumulation,
            "weight_decay": 0.0, "warmup_fraction": 0.0, "schedule": "linear", "gradient_clipping": 1.0,
            "zero_stage": 0, "offload_optimizer": False, "offload_parameters": False,
            "gradient_checkpointing": False, "eval_batch_size": 8, **setting}


def run_adapt(work: Path, name: str, spec: dict, tokens: Path, gpus: int) -> dict:
    """The adapt job exactly as the rule starts it (workflow/rules/common.smk: launcher, adapt_spec)."""
    out = work / "out" / name
    job = {"log": str(work / f"{name}.log"), "model_key": name, "model_spec": spec, "mode": "full",
           "join_policy": "keep", "scheme_options": {}, "domain": "random", "tokens": str(tokens),
           "output_dir": str(out), "checkpoint_dir": str(work / "ckpt" / name),
           "adaptation": {"curve_points": 2, "curve_max_blocks": 4, "seen_first_fraction": 0.01,
                          "checkpoint_every": 10**9, "loss": "model",
                          "plan": {"gpu_memory_gb": 80, "gpu_peak_tflops": 989, "utilisation": 0.35, "check": False}},
           "seed": 1, "threads": 4}
    script = str(REPO / "workflow/scripts/adapt.py")
    launcher = ["deepspeed", "--num_gpus", str(gpus), script] if gpus > 1 else [sys.executable, script]
    start = time.perf_counter()
    done = subprocess.run([*launcher, json.dumps(job)], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        log = Path(job["log"]).read_text(errors="replace") if Path(job["log"]).exists() else ""
        raise RuntimeError(f"{name}: adapt failed\n{done.stderr[-2000:]}\n{log[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    memory = json.loads((out / "memory.json").read_text())
    return {"metrics": metrics, "memory": memory, "wall": time.perf_counter() - start}


def planned_device_bytes(model_dir: Path, spec: dict, device: str, gpus: int) -> float:
    from analysis.lm import plan

    target = plan.Target(device=device, device_memory_bytes=1e15, processes=gpus)
    est = plan.plan_model(str(model_dir), "full", {}, micro_batch=spec["micro_batch_size"],
                          context=spec["context_length"], dtype=spec["dtype"], loss="model", target=target,
                          settings=[plan.setting_of(spec)], measure_device=device)[0]
    return est.device_bytes if device == "cuda" else est.host_bytes


def perplexity_rates(model_dir: Path, tokens: Path, context: int, stride: int, device: str) -> tuple[float, float]:
    import numpy as np
    import torch

    from analysis.lm.data import load_split
    from analysis.lm.models import load_causal_lm
    from analysis.lm.perplexity import token_nll
    from benchmarks.perplexity import docs_loop

    dtype = "bfloat16" if device == "cuda" else "float32"
    model = load_causal_lm(str(model_dir), dtype=dtype).to(device).eval()
    stream = np.asarray(load_split(tokens, "test"))
    rates = []
    for run in ("engine", "docs"):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if run == "engine":
            token_nll(model, stream, 0, window=context, stride=stride, batch_size=16, device=device)
        else:
            docs_loop(model, stream, 0, context, stride, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(len(stream) / (time.perf_counter() - start))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: test this script here")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--small-tokens", type=int, default=12_000_000, help="GPT-2 small training tokens")
    args = parser.parse_args()

    import torch

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; run with --cpu-smoke to test the script on tiny shapes")
    device = "cpu" if smoke else "cuda"
    shapes = SMOKE_SHAPES if smoke else SHAPES
    name = "CPU (smoke test)" if smoke else torch.cuda.get_device_name(0)
    peak = float("nan") if smoke else gpu_peak(name)
    import deepspeed
    import transformers

    print(f"{name}; torch {torch.__version__}, transformers {transformers.__version__}, deepspeed "
          f"{deepspeed.__version__}; bf16 {'yes' if device == 'cuda' and torch.cuda.is_bf16_supported() else 'no'}",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # (shape, context, micro-batch, accumulation, setting, train tokens): micro-batch 16 x 1024 for
        # GPT-2 small's utilisation; a few steps of the large ones.
        context = 64 if smoke else None
        runs = [
            ("gpt2-small", context or 1024, 4 if smoke else 16, 1, {}, 20_000 if smoke else args.small_tokens),
            ("llama-1b", context or 2048, 2 if smoke else 4, 1, {}, 8_000 if smoke else 2_000_000),
            ("gpt2-xl", context or 1024, 1, 1, {"zero_stage": 3, "offload_optimizer": True,
                                                "offload_parameters": True}, 2_000 if smoke else 12 * 1024),
        ]
        for shape, ctx, micro, accumulation, setting, train_tokens in runs:
            model_dir = save_model(work / shape, shapes[shape])
            tokens = save_tokens(work / "tokens" / shape, shapes[shape]["vocab_size"], train_tokens,
                                 8 * ctx)
            spec = model_spec(model_dir, ctx, micro, accumulation, **setting)
            result = run_adapt(work, shape, spec, tokens, args.gpus)
            metrics, memory = result["metrics"], result["memory"]
            params = memory["total_parameters"]
            rate = metrics["tokens_per_second"]
            mfu = 6 * params * rate / (peak * args.gpus) if not smoke else float("nan")
            measured = memory.get("peak_allocated_bytes") if device == "cuda" else memory["peak_resident_bytes"]
            planned = planned_device_bytes(model_dir, spec, device, args.gpus)
            label = " + ".join(f"{k}={v}" for k, v in setting.items()) or "ZeRO-0"
            rows.append((f"adapt {shape} ({params / 1e6:,.0f} M), {metrics['precision']}",
                         f"{label}, micro-batch {micro} x {ctx}", f"{rate:,.0f}", mfu, measured, planned,
                         f"{metrics['steps']} steps, {result['wall']:.0f} s wall"))
            print(rows[-1], flush=True)
        small = work / "gpt2-small"
        ctx = 64 if smoke else 1024
        engine, docs = perplexity_rates(small, work / "tokens" / "gpt2-small.bin", ctx, ctx // 2, device)
        rows.append(("perplexity gpt2-small: engine / HF strided loop", f"window {ctx}, stride {ctx // 2}",
                     f"{engine:,.0f} / {docs:,.0f}", float("nan"), None, None, f"{engine / docs:.2f}x"))
    what = "peak allocated" if device == "cuda" else "peak resident"
    print(f"\n| check | setting | tokens/s | MFU | {what} GB | plan GB | plan / measured | note |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for check, setting, rate, mfu, measured, planned, note in rows:
        cells = [check, setting, rate, "" if math.isnan(mfu) else f"{mfu:.1%}",
                 "" if measured is None else f"{measured / 1e9:.2f}", "" if planned is None else f"{planned / 1e9:.2f}",
                 "" if not measured else f"{planned / measured:.2f}", note]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
