"""GPU check of the adaptation path (issue 15, part 5): one script, one Markdown table.

    bash benchmarks/gpu_check.sh            # on the GPU machine: preflight, carried wheels, CUDA, then this
    python benchmarks/gpu_check.py          # the checks themselves (budget: 8 minutes on one H200)
    python benchmarks/gpu_check.py --smoke  # here, without a GPU: the same code on tiny shapes (= --cpu-smoke)
    python benchmarks/gpu_check.py --out gpu_check.md   # the table also to a file, rewritten after each row

No hub access: every model is random-initialised from a config (GPT-2 small, the GPT-2 xl shape, a
LLaMA-style ~1B shape) and saved in Hugging Face format with a small BPE tokenizer; the token
streams are random ids in the token-file layout the pipeline writes. Rows:

1. **adapt, bf16**: GPT-2 small and the LLaMA-style 1B, one epoch through the rule's own launcher
   (``workflow/scripts/adapt.py`` with the job spec ``adapt_spec`` builds; ``deepspeed --num_gpus N``
   when ``--gpus`` > 1): tokens/s, model FLOPs utilisation (6 x parameters x tokens/s over the GPU's
   dense bf16 peak), peak allocated memory against the plan's device estimate.
2. **ZeRO-2 + optimizer offload** of the GPT-2 xl shape: a few steps with DeepSpeed's CPU Adam; peak
   allocated against the plan (``analysis.lm.plan``).
3. **ZeRO-3 + offload** of the same shape: optimizer and parameter offload, a few steps; likewise.
4. **perplexity**: ``analysis.lm.perplexity``'s engine against the Hugging Face docs' strided loop
   (benchmarks/perplexity.py) on the same GPU, GPT-2 small, bf16: tokens/s of each.

The job specs are the schema's defaults (``models.*``, ``adaptation``) with only what the check must
set overridden (``check_spec``, ``check_adaptation``). Each row runs on its own: a failing row shows
its error, shortened, in the table and the others go on; the exit status is 1 if any row failed.
Rows are printed to stderr as they complete, the whole table to stdout at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.lm.plan import KNOWN_CONFIGS  # noqa: E402  (torch-free: the plan's arithmetic module)

#: The paper's GPT-2 shapes as the plan knows them; the LLaMA-style 1B has TinyLlama's widths and depth
#: (with as many key-value heads as query heads).
SHAPES = {
    "gpt2-small": KNOWN_CONFIGS["gpt2"],
    "gpt2-xl": KNOWN_CONFIGS["gpt2-xl"],
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
#: The check's share of gpu_check.sh's 8 minutes (the preflight and the wheels' install take the rest).
FULL_BUDGET_S = 450
SMOKE_BUDGET_S = 300
ZERO2_OFFLOAD = {"zero_stage": 2, "offload_optimizer": True}
ZERO3_OFFLOAD = {"zero_stage": 3, "offload_optimizer": True, "offload_parameters": True}


@dataclass
class Adapt:
    """One adapt job: a shape, its block length and micro-batch, a ZeRO setting, the tokens of its epoch."""

    shape: str
    context: int
    micro_batch: int
    train_tokens: int
    setting: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        label = "-".join(f"{k}{int(v)}" for k, v in self.setting.items())
        return f"{self.shape}-{label}" if label else self.shape


def adapt_rows(smoke: bool, small_tokens: int) -> list[Adapt]:
    # GPT-2 small at micro-batch 16 x 1024 for its utilisation; the offload rows run a few optimizer
    # steps, each a host AdamW step over 1.5 B parameters (1.5 s at the plan's HOST_ADAM_PARAMS_PER_S):
    # the peak memory is reached in the first.
    if smoke:
        return [Adapt("gpt2-small", 64, 4, 8 * 4 * 64), Adapt("llama-1b", 64, 2, 8 * 2 * 64),
                Adapt("gpt2-xl", 64, 2, 6 * 2 * 64, ZERO2_OFFLOAD), Adapt("gpt2-xl", 64, 1, 6 * 64, ZERO3_OFFLOAD)]
    return [Adapt("gpt2-small", 1024, 16, small_tokens), Adapt("llama-1b", 2048, 4, 2_000_000),
            Adapt("gpt2-xl", 1024, 4, 6 * 4 * 1024, ZERO2_OFFLOAD),
            Adapt("gpt2-xl", 1024, 1, 8 * 1024, ZERO3_OFFLOAD)]


def gpu_peak(name: str) -> float:
    for key, value in PEAKS.items():
        if key in name.upper():
            return value
    return float("nan")


def check_spec(model_dir: Path, row: Adapt) -> dict:
    """A model section as a config would give it: the schema's defaults, then what the check sets.

    learning_rate and corpus are required without a default (the rate does not change speed or
    memory; corpus names no corpus here). Validated against the schema's model section, so that a
    key the schema renames or drops fails here, naming it, rather than inside the job.
    """
    import jsonschema

    from analysis.config import load_schema, schema_defaults

    spec = {**schema_defaults("models.*"), "name_or_path": str(model_dir), "learning_rate": 5e-5,
            "corpus": "none", "context_length": row.context, "micro_batch_size": row.micro_batch, **row.setting}
    section = load_schema()["properties"]["models"]["additionalProperties"]
    for error in jsonschema.Draft7Validator(section).iter_errors(spec):
        raise ValueError(f"gpu_check: models.{row.name}.{'.'.join(map(str, error.absolute_path))}: {error.message}")
    return spec


def check_adaptation() -> dict:
    """The adaptation section's keys that adapt_spec passes (workflow/rules/adaptation_specs.smk), from
    the schema's defaults, with one override: no checkpoints (the default writes curve_points - 2 of
    them; one of GPT-2 xl with its optimizer state is ~21 GB, on a 64 GB disk). The job's own plan
    check runs as in the pipeline (train() resets the CUDA peak before training, so the peak this
    table compares with the plan is the training's)."""
    from analysis.config import schema_defaults

    section = schema_defaults("adaptation")
    adaptation = {k: section[k] for k in ("curve_points", "curve_max_blocks", "max_train_tokens",
                                          "seen_first_fraction", "checkpoint_every", "loss", "plan")}
    adaptation["checkpoint_every"] = 10**9
    return adaptation


def save_model(directory: Path, shape: dict, device: str) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from analysis.lm.pretrain import train_tokenizer

    shape = dict(shape)
    tokenizer = train_tokenizer([f"text number {i} of the check, with words and more words" for i in range(200)],
                                vocab_size=300)
    config = AutoConfig.for_model(shape.pop("model_type"), **shape, bos_token_id=tokenizer.eos_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    # On the GPU: initialised there (seconds, not a minute of host init for 1.5 B parameters) and
    # saved in bf16, the precision the job loads it in (half the bytes to write and read).
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
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


def short_error(text: str, limit: int = 160) -> str:
    """The line of a traceback or log that says what went wrong, fit for a table cell."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^([\w.]+(Error|Exception|Interrupt)|error|ERROR)\b", line)]
    line = (named or lines or ["(no message)"])[-1]
    line = line.replace("|", "/")
    return line if len(line) <= limit else line[: limit - 3] + "..."


class RowError(RuntimeError):
    """A row that failed: ``short`` goes into the table, the rest to stderr."""

    def __init__(self, short: str, detail: str = ""):
        super().__init__(short)
        self.short, self.detail = short, detail


def adapt_job(work: Path, row: Adapt, spec: dict, tokens: Path, threads: int) -> dict:
    """The adapt job's spec as adapt_spec builds it (workflow/rules/adaptation_specs.smk): the train
    policy and schemes are the schema's defaults; seed is required in a config, without a default."""
    from analysis.config import schema_defaults

    return {"log": str(work / f"{row.name}.log"), "model_key": row.name, "model_spec": spec, "mode": "full",
            "train_policy": schema_defaults("adaptation")["join_policy"],
            "scheme_options": schema_defaults("adaptation.schemes"), "domain": "random", "tokens": str(tokens),
            "output_dir": str(work / "out" / row.name), "checkpoint_dir": str(work / "ckpt" / row.name),
            "adaptation": check_adaptation(), "seed": 1, "threads": threads}


def run_adapt(work: Path, row: Adapt, spec: dict, tokens: Path, gpus: int, threads: int, timeout: float) -> dict:
    """The adapt job as the rule starts it (adaptation_specs.smk: adapt_spec, launcher)."""
    job = adapt_job(work, row, spec, tokens, threads)
    out = Path(job["output_dir"])
    script = str(REPO / "workflow/scripts/adapt.py")
    launcher = ["deepspeed", "--num_gpus", str(gpus), script] if gpus > 1 else [sys.executable, script]
    start = time.perf_counter()
    try:
        done = subprocess.run([*launcher, json.dumps(job)], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise RowError(f"timed out after {timeout:.0f} s (the check's budget)", stderr[-3000:]) from None
    if done.returncode != 0:
        log = Path(job["log"]).read_text(errors="replace") if Path(job["log"]).exists() else ""
        raise RowError(short_error(f"{done.stderr}\n{log}"), f"{done.stderr[-3000:]}\n{log[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    memory = json.loads((out / "memory.json").read_text())
    return {"metrics": metrics, "memory": memory, "wall": time.perf_counter() - start}


def planned_bytes(model_dir: Path, spec: dict, device: str, gpus: int) -> float:
    """The plan's per-process figure for this job: device bytes on a GPU, host bytes on a CPU run."""
    from analysis.lm import plan

    target = plan.Target(device=device, device_memory_bytes=1e15, processes=gpus)
    est = plan.plan_model(str(model_dir), "full", {}, micro_batch=spec["micro_batch_size"],
                          context=spec["context_length"], dtype=spec["dtype"], loss="model", target=target,
                          settings=[plan.setting_of(spec)], measure_device=device)[0]
    if device == "cuda":  # the measurement's blocks, cached by this process, stay out of the next job's way
        import torch

        torch.cuda.empty_cache()
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
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return rates[0], rates[1]


def millions(count: int) -> str:
    return f"{count / 1e6:,.0f}" if count >= 10e6 else f"{count / 1e6:.2g}"


def describe(setting: dict) -> str:
    from analysis.lm.plan import Setting

    return Setting(**setting).describe()


class Table:
    """The rows so far: each printed to stderr as it lands, all of them to stdout (and ``out``) at the end."""

    COLUMNS = ("check", "setting", "tokens/s", "MFU", "{what} GB", "plan GB", "plan / measured", "note")

    def __init__(self, title: str, what: str, out: Path | None):
        self.title, self.what, self.out, self.rows, self.failed = title, what, out, [], 0
        print(self.header(), file=sys.stderr, flush=True)

    def header(self) -> str:
        names = [c.format(what=self.what) for c in self.COLUMNS]
        return "| " + " | ".join(names) + " |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"

    def add(self, check: str, setting: str, rate: str = "", mfu: float = float("nan"), measured: float | None = None,
            planned: float | None = None, note: str = "", failed: bool = False) -> None:
        cells = [check, setting, rate, "" if math.isnan(mfu) else f"{mfu:.1%}",
                 "" if measured is None else f"{measured / 1e9:.2f}", "" if planned is None else f"{planned / 1e9:.2f}",
                 "" if not (measured and planned) else f"{planned / measured:.2f}", note]
        line = "| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |"
        self.rows.append(line)
        self.failed += failed
        print(line, file=sys.stderr, flush=True)
        self.write(final=False)

    def text(self) -> str:
        return "\n".join([self.title, "", self.header(), *self.rows]) + "\n"

    def write(self, final: bool) -> None:
        if self.out is not None:  # rewritten after each row: a run stopped from outside leaves the rows done
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(self.text() if final else self.text() + "\n(incomplete: the check is running)\n")


@contextlib.contextmanager
def table_stdout():
    """The real stdout for the table; file descriptor 1 goes to stderr meanwhile, so that what the
    libraries print there (DeepSpeed's logger writes to stdout) stays out of the table's stream."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(saved), "w") as out:
            yield out
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    with table_stdout() as out:
        return run_check(out, argv)


def run_check(stdout, argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", "--smoke", dest="smoke", action="store_true",
                        help="tiny shapes on CPU: test this script here")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--small-tokens", type=int, default=8_000_000, help="GPT-2 small training tokens")
    parser.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", 0)) or None,
                        help=f"seconds for all rows (default {FULL_BUDGET_S}, smoke {SMOKE_BUDGET_S}; "
                             "env GPU_CHECK_BUDGET_S): a job still running then fails its row, later rows are skipped")
    parser.add_argument("--out", type=Path, default=os.environ.get("GPU_CHECK_OUT") or None,
                        help="also write the table here (env GPU_CHECK_OUT), after every row")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    budget = args.budget or (SMOKE_BUDGET_S if args.smoke else FULL_BUDGET_S)

    import torch

    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; --smoke runs the script on tiny shapes on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if smoke else "cuda"
    shapes = SMOKE_SHAPES if smoke else SHAPES
    name = "CPU (smoke test)" if smoke else torch.cuda.get_device_name(0)
    peak = float("nan") if smoke else gpu_peak(name)
    # Versions from the installed metadata: a missing DeepSpeed fails its rows, not this line.
    versions = []
    for dist in ("torch", "transformers", "deepspeed", "huggingface_hub"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} missing")
    bf16 = "yes" if device == "cuda" and torch.cuda.is_bf16_supported() else "no"
    title = f"{name}; {', '.join(versions)}; bf16 {bf16}"
    print(title, file=stdout, flush=True)
    what = "peak allocated" if device == "cuda" else "peak resident"
    table = Table(title, what, args.out)
    threads = len(os.sched_getaffinity(0)) if not smoke else 2  # a GPU job gets the node; CPU Adam uses them

    def remaining() -> float:
        return budget - (time.perf_counter() - start)

    def failed_row(check: str, setting: str, exc: BaseException) -> None:
        short = exc.short if isinstance(exc, RowError) else short_error(f"{type(exc).__name__}: {exc}")
        detail = exc.detail if isinstance(exc, RowError) else ""
        print(f"gpu_check: {check} failed: {short}\n{detail}".rstrip(), file=sys.stderr, flush=True)
        table.add(check, setting, note=f"FAILED: {short}", failed=True)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        # DeepSpeed compiles its CPU Adam on first use (~70 s on this project's 2-core machine; once per
        # machine): built meanwhile on the host's idle cores, it is cached when the offload rows load it.
        prebuild = None if smoke else subprocess.Popen([sys.executable, "-m", "analysis", "build-ops"], cwd=REPO,
                                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        models: dict[str, Path | BaseException] = {}

        def model_of(shape: str) -> Path:
            if shape not in models:  # one model per shape: the two offload rows share GPT-2 xl
                try:
                    models[shape] = save_model(work / shape, shapes[shape], device)
                except Exception as exc:  # noqa: BLE001 - the rows of this shape report it
                    models[shape] = exc
            if isinstance(models[shape], BaseException):
                raise models[shape]
            return models[shape]

        tokens_of: dict[str, Path] = {}
        for row in adapt_rows(smoke, args.small_tokens):
            check = f"adapt {row.shape}"
            setting = f"{describe(row.setting)}, micro-batch {row.micro_batch} x {row.context}"
            if remaining() <= 0:
                table.add(check, setting, note=f"not run: the budget of {budget:.0f} s is spent", failed=True)
                continue
            try:
                model_dir = model_of(row.shape)
                tokens = save_tokens(work / "tokens" / row.name, shapes[row.shape]["vocab_size"], row.train_tokens,
                                     8 * row.context)
                tokens_of.setdefault(row.shape, tokens)
                spec = check_spec(model_dir, row)
                result = run_adapt(work, row, spec, tokens, args.gpus, threads, timeout=max(1.0, remaining()))
                metrics, memory = result["metrics"], result["memory"]
                params = memory["total_parameters"]
                rate = metrics["tokens_per_second"]
                mfu = 6 * params * rate / (peak * args.gpus) if not smoke else float("nan")
                measured = memory.get("peak_allocated_bytes") if device == "cuda" else memory["peak_resident_bytes"]
                planned = planned_bytes(model_dir, spec, device, args.gpus)
                table.add(f"{check} ({millions(params)} M), {metrics['precision']}", setting, f"{rate:,.0f}", mfu,
                          measured, planned, f"{metrics['steps']} steps, {result['wall']:.0f} s wall")
            except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
                failed_row(check, setting, exc)

        ctx = 64 if smoke else 1024
        check, setting = "perplexity gpt2-small: engine / HF strided loop", f"window {ctx}, stride {ctx // 2}"
        if remaining() <= 0:
            table.add(check, setting, note=f"not run: the budget of {budget:.0f} s is spent", failed=True)
        else:
            try:
                tokens = tokens_of.get("gpt2-small") or save_tokens(work / "tokens" / "perplexity", shapes["gpt2-small"]
                                                                    ["vocab_size"], 8 * ctx, 8 * ctx)
                engine, docs = perplexity_rates(model_of("gpt2-small"), tokens, ctx, ctx // 2, device)
                table.add(check, setting, f"{engine:,.0f} / {docs:,.0f}", note=f"{engine / docs:.2f}x")
            except Exception as exc:  # noqa: BLE001
                failed_row(check, setting, exc)

        if prebuild is not None and prebuild.poll() is None:
            prebuild.kill()
    print("\n" + table.header(), file=stdout)
    print("\n".join(table.rows), file=stdout, flush=True)
    table.write(final=True)
    print(f"gpu_check: {len(table.rows) - table.failed} of {len(table.rows)} rows done in "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())
