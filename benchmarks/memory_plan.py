"""The memory plan (analysis/lm/plan.py) against what training really allocates, on CPU.

    .venv/bin/python benchmarks/memory_plan.py [--shapes demo gpt2 smollm2] [--steps 2] [--zero-stages 3] [--repeats 3]
    .venv/bin/python benchmarks/memory_plan.py --smoke   # a 1-block GPT-2, ZeRO-0, ZeRO-2 + offload, ZeRO-3, 2 steps

For each model shape and setting (ZeRO stage, optimizer offload, checkpointing), a fresh process
trains a randomly initialised model of that shape for a few steps through analysis.lm.train.train
(DeepSpeed's CPU accelerator) and reports what does not come from the plan:

* DeepSpeed's own partitions and buffers, read from its optimizer after the first step: the AdamW
  moments, the fp32 master partition, the parameter partition, ZeRO-1/2's reduction bucket and, under
  optimizer offload, the copy buffers and the fp32 gradient partition (``memory.json``'s fields);
* the bytes autograd saved for backward at full depth (the plan extrapolates them from depths 1 and 2);
* the process's peak resident memory (VmHWM) over the run (after the first step the AdamW state
  exists, so later steps hold everything at once).

and the plan's figure for each, with the ratio. One Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    # The demo's model (config.yaml: models.tiny-gpt2.pretrain) at its context length.
    "demo": {"config": {"model_type": "gpt2", "n_layer": 4, "n_embd": 128, "n_head": 4, "vocab_size": 4096,
                        "n_positions": 128}, "context": 128, "micro_batch": 8},
    "gpt2": {"config": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
                        "n_positions": 1024}, "context": 1024, "micro_batch": 1},
    # SmolLM2-135M (presets/smollm2-quick.yaml: 2 x 512): LLaMA blocks, grouped-query attention, a tied
    # 49k vocabulary.
    "smollm2": {"config": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
                           "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                           "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": True},
                "context": 512, "micro_batch": 2},
    "smoke": {"config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 256,
                         "n_positions": 32}, "context": 32, "micro_batch": 2},
}
SETTINGS = [
    {"zero_stage": 0}, {"zero_stage": 2}, {"zero_stage": 3}, {"zero_stage": 0, "gradient_checkpointing": True},
    {"zero_stage": 2, "offload_optimizer": True},
    {"zero_stage": 3, "offload_optimizer": True, "offload_parameters": True, "gradient_checkpointing": True},
]


def child(model_dir: str, setting: dict, context: int, micro_batch: int, steps: int) -> None:
    """Train in this (fresh) process and print the memory record as JSON."""
    import logging

    import numpy as np
    import torch

    from analysis.lm.models import load_causal_lm
    from analysis.lm.train import TrainSettings, train

    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(2)
    model = load_causal_lm(model_dir)
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, model.config.vocab_size, (micro_batch * steps, context))
    settings = TrainSettings(learning_rate=1e-4, micro_batch_size=micro_batch, curve_points=2, **setting)
    with tempfile.TemporaryDirectory() as checkpoints:
        result = train(model, blocks, np.arange(len(blocks)), {}, settings, checkpoint_dir=checkpoints,
                       fingerprint="plan", progress=False)
    if result["module"] is None:  # ZeRO-3: what adapt does with the gathered tensors
        plain = load_causal_lm(model_dir)
        plain.load_state_dict(result["state_dict"], strict=False)
        del plain
    from analysis.lm.train import peak_resident_bytes

    result["memory"]["peak_resident_bytes"] = peak_resident_bytes()
    print("RECORD " + json.dumps(result["memory"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["demo", "gpt2"], choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1,
                        help="fresh processes per setting; the peak is their median, with the range beside it")
    parser.add_argument("--zero-stages", type=int, nargs="+", choices=[0, 2, 3],
                        help="only the settings of these ZeRO stages (default: all six settings)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="the smoke shape, ZeRO-0, ZeRO-2 + offload and ZeRO-3, 2 steps")
    args = parser.parse_args()
    settings = [s for s in SETTINGS if args.zero_stages is None or s["zero_stage"] in args.zero_stages]
    if args.smoke:
        args.shapes, args.steps = ["smoke"], 2
        settings = [{"zero_stage": 0}, {"zero_stage": 2, "offload_optimizer": True}, {"zero_stage": 3}]
    if args.child:
        spec = json.loads(args.child)
        child(spec["model_dir"], spec["setting"], spec["context"], spec["micro_batch"], args.steps)
        return

    from transformers import AutoConfig, AutoModelForCausalLM

    from analysis.lm import plan

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes:
            shape_spec = SHAPES[name]
            spec = dict(shape_spec["config"])
            config = AutoConfig.for_model(spec.pop("model_type"), **spec, bos_token_id=0, eos_token_id=0)
            model_dir = Path(tmp) / name
            AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
            shape = plan.model_shape(str(model_dir))
            target = plan.Target(device="cpu")
            for setting in settings:
                payload = json.dumps({"model_dir": str(model_dir), "setting": setting,
                                      "context": shape_spec["context"], "micro_batch": shape_spec["micro_batch"]})
                runs = []
                for _ in range(args.repeats):
                    out = subprocess.run([sys.executable, __file__, "--child", payload, "--steps", str(args.steps)],
                                         capture_output=True, text=True, cwd=REPO)
                    line = next((l for l in out.stdout.splitlines() if l.startswith("RECORD ")), None)
                    if line is None:
                        raise SystemExit(f"{name} {setting}: child failed\n{out.stderr[-3000:]}")
                    runs.append(json.loads(line[len("RECORD "):]))
                peaks = sorted(r["peak_resident_bytes"] for r in runs)
                # The allocator reuses freed blocks differently from process to process: the peak
                # varies between runs, what DeepSpeed allocates and autograd saves should not.
                varying = sorted(k for k in runs[0] if not k.startswith("peak_resident_bytes")
                                 and any(r.get(k) != runs[0][k] for r in runs))
                if varying:
                    print(f"{name} {setting}: {', '.join(varying)} differ between runs", file=sys.stderr)
                measured = {**runs[0], "peak_resident_bytes": statistics.median(peaks)}
                spread = f"{peaks[0] / 1e6:,.0f}-{peaks[-1] / 1e6:,.0f}" if len(peaks) > 1 else ""
                s = plan.Setting(**setting)
                est = plan.plan_model(str(model_dir), "full", {}, micro_batch=shape_spec["micro_batch"],
                                      context=shape_spec["context"], dtype="float32", loss="model", target=target,
                                      settings=[s])[0]
                states = plan.state_bytes(shape, s, "float32")
                where = {**states["device"], **states["host"]}
                pairs = {
                    "AdamW moments": (where["AdamW moments"], measured["optimizer_state_bytes"]),
                    "fp32 master": (where["fp32 master"], measured["master_weight_bytes"]),
                    "parameter partition": (where["weights"], measured["parameter_partition_bytes"]),
                    "saved for backward": (est.activations.total, measured["saved_for_backward_bytes"]),
                    "reduce bucket, allocated": (states["device"]["reduce bucket"],
                                                 measured.get("reduce_bucket_bytes", 0)),
                    "peak resident (VmHWM)": (est.host_bytes, measured["peak_resident_bytes"]),
                }
                if s.zero_stage == 3:  # measured in the second step, once DeepSpeed has traced the order
                    pairs["gathered at the end of forward"] = (states["device"]["gathered weights"],
                                                               measured["gathered_bytes_after_forward"])
                if s.offload_optimizer and s.zero_stage < 3:
                    pairs["offload copy buffers, device + host"] = (
                        states["device"]["offload copies"] + states["host"]["offload copies"],
                        sum(measured["offload_copy_bytes"].values()))
                    pairs["fp32 gradient partition"] = (where["fp32 gradients"], measured["fp32_gradient_bytes"])
                for what, (planned, got) in pairs.items():
                    rows.append((name, s.describe(), what, planned, got, spread if what.startswith("peak") else ""))
    print(f"{args.repeats} fresh process(es) per setting, {args.steps} steps each; the peak is their median\n")
    print("| shape | setting | quantity | plan MB | measured MB | range over runs MB | plan / measured |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for name, setting, what, planned, got, spread in rows:
        ratio = f"{planned / got:.3f}" if got else ("1.000" if not planned else "-")
        print(f"| {name} | {setting} | {what} | {planned / 1e6:,.1f} | {got / 1e6:,.1f} | {spread or '-'} | {ratio} |")


if __name__ == "__main__":
    main()
