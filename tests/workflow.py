"""Running the workflow from tests: Snakemake in a subprocess, the small demo config, dry-run job counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.builders import REPO

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def job_environment() -> dict[str, str]:
    """This environment, with Python's output unbuffered (a job's log shows where it stopped)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def snakemake(
    workdir: Path, *args: str, configfile: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]
    if configfile is not None:  # last: --configfile takes every following word as a file
        command += ["--configfile", str(configfile)]
    result = subprocess.run(command, capture_output=True, text=True, env=job_environment(), timeout=timeout)
    result.output = result.stdout + result.stderr  # Snakemake prints errors on either stream
    return result


def small_demo_config(path: Path, **changes) -> Path:
    """The shipped demo config with a smaller corpus, so the test stays fast."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["demo"].update(source_documents=400, domain_documents={"train": 40, "valid": 5, "test": 5})
    cfg["corpora"]["webtext"]["n_texts"] = 300
    cfg["sampling"]["domain_min_texts"] = 100
    model = cfg["models"]["tiny-gpt2"]
    model.update(context_length=32, micro_batch_size=4)
    model["pretrain"].update(n_layer=1, n_embd=32, n_head=2, vocab_size=400, micro_batch_size=8)
    cfg["adaptation"].update(modes=["full", "sparse"], curve_points=3, curve_max_blocks=4,
                             schemes={"sparse": {"n_bias_update": 1, "weight_update": {"-1.mlp.c_fc": 0.25}}})
    cfg["evaluation"] = {"token_level": {"chunks": 4, "chunk_tokens": 64}}
    # The demo runs two policies on a Wikipedia-like domain; the tests run all three on an S2ORC one.
    cfg["adaptation"]["join_ablation"].update(policies=["keep", "strip", "paragraph"], domains=["hep-ex"])
    cfg["edge"] = {
        "source": {"dataset": "digits", "classes": [0, 1, 2], "max_per_class": 60},
        "target": {"dataset": "digits", "classes": [3, 4, 5], "max_per_class": 60},
        "image_size": 16,
        "net": {"stages": [[1, 8, 1, 1], [4, 12, 2, 2], [4, 16, 1, 1]], "head_channels": 16},
        "pretrain": {"epochs": 6, "batch_size": 16},
        "transfer": {"epochs": 2, "modes": ["full", "last", "bias", "lite_residual"]},
        "sparse": {"budgets_kib": [16, 64], "ratios": [0.5, 1.0], "layers": ["1.depthwise", "2.expand", "3.project"],
                   "unit_epochs": 1, "population": 8, "generations": 4},
        "federated": {"clients": 4, "rounds": 2, "local_steps": 5, "partitions": ["iid", "dirichlet"]},
        "leakage": {"attacks": 1, "iterations": 20, "batch_sizes": [1, 2],
                    "defenses": {"gaussian": [0.1], "laplacian": [], "prune": [0.99]}, "accuracy": {"steps": 50}},
        "compression": {"finetune": {"epochs": 1},
                        "pruning": {"scan_sparsities": [0.5], "sparsities": [0.5], "channel_ratios": [0.5]},
                        "quantization": {"kmeans_bits": [2], "linear_bits": [4]},
                        "distillation": {"temperatures": [4], "epochs": 2}},
    }
    for key, value in changes.items():
        cfg[key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake dry run, as {rule: count}."""
    counts = {}
    for line in output.split("Job stats:")[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts
