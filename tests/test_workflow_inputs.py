"""Bad input stops the workflow with the key or file named; the paper preset plans; lint and format."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.builders import REPO
from tests.workflow import job_counts, SNAKEMAKE, snakemake

pytestmark = pytest.mark.integration


def test_unreadable_dataset_fails_the_job_with_the_file_named(tmp_path):
    import numpy as np

    from analysis.edge.data import write_idx

    root = tmp_path / "idx"
    root.mkdir()
    for split, n in (("train", 12), ("t10k", 6)):
        write_idx(root / f"{split}-images-idx3-ubyte", np.zeros((n, 8, 8), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 3)
    (root / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78" + b"\0" * 64)
    cfg = yaml.safe_load(real_data_config(tmp_path, ["hep-ex"], 1).read_text())
    cfg["edge"] = {"source": {"dataset": "idx", "path": str(root)}}
    configfile = tmp_path / "edge.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    result = snakemake(tmp_path, "results/edge/source/net.pt", configfile=configfile)
    assert result.returncode != 0
    assert f"{root / 'train-images-idx3-ubyte'}: not an IDX file (magic number 0x12345678" in result.output
    assert "Traceback" not in result.output


def real_data_config(tmp_path: Path, domains: list[str], n_texts: int) -> Path:
    """A non-demo config over a one-domain M2D2 root (hep-ex, 2 lines) and a 2-text jsonl corpus."""
    (tmp_path / "m2d2" / "hep-ex").mkdir(parents=True)
    (tmp_path / "m2d2" / "hep-ex" / "train.txt").write_text("x\ny\n")
    (tmp_path / "web.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    cfg = {
        "seed": 1,
        "m2d2": {"root": str(tmp_path / "m2d2")},
        "domains": {"adaptation": domains},
        "corpora": {"web": {"format": "jsonl", "path": str(tmp_path / "web.jsonl"), "n_texts": n_texts}},
        "edge": {"enabled": False},
    }
    configfile = tmp_path / "real.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    return configfile


def test_missing_real_domain_is_named(tmp_path):
    result = snakemake(tmp_path, "-n", configfile=real_data_config(tmp_path, ["hep-ex", "hep-lat"], 1))
    assert result.returncode != 0
    assert f"unknown domain 'hep-lat': not in the M2D2 root '{tmp_path / 'm2d2'}'" in result.output


def test_sample_larger_than_corpus_fails_the_job_with_a_clear_message(tmp_path):
    result = snakemake(tmp_path, "--keep-going", configfile=real_data_config(tmp_path, ["hep-ex"], 5))
    assert result.returncode != 0
    assert "has 2 non-empty texts but corpora.web.n_texts asks for 5" in result.output
    # The run's closing words (onerror) name the failed job's log and quote its end.
    assert "Rule sample_source failed; its log results/logs/sample_source/web.log ends with:" in result.output
    assert "  | ERROR: " in result.output
    assert (tmp_path / "results/samples/domains/hep-ex.parquet").is_file()  # the other job still ran
    assert not (tmp_path / "results/samples/sources/web.parquet").exists()


def test_paper_preset_plans_the_full_grid_with_per_model_resources(tmp_path):
    """The paper's grid as a dry run over a skeleton M2D2 tree (benchmarks/dag_scale.py times it)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from dag_scale import skeleton

    configfile = skeleton(tmp_path, yaml.safe_load((REPO / "presets/paper.yaml").read_text()))
    result = snakemake(tmp_path, "-n", configfile=configfile)
    assert result.returncode == 0, result.output[-3000:]
    counts = job_counts(result.output)
    assert counts["adapt"] == 5 * 20 and counts["evaluate"] == 5 * 20 and counts["zero_shot"] == 5 * 20
    assert counts["embed"] == 3 + 199 and counts["distance"] == 3 * 199
    assert counts["plan"] == 5  # one memory plan per model
    # Resources follow the model's plan once it exists: GPT-2 small and LLaMA-7B (ZeRO-2 with the
    # optimizer offloaded to the host) ask for very different host memory.
    from analysis import config as config_lib
    from analysis.lm import plan

    cfg = config_lib.load(configfile)
    for model in ("gpt2", "llama-7b"):
        target = plan.config_target(cfg, model)
        spec = cfg["models"][model]
        shape = plan.model_shape(spec["name_or_path"])
        none = plan.Activations(fixed=0, per_block=0, layers=shape.layers, measured_depths=(1, 2))
        est = plan.estimate(shape, plan.setting_of(spec), none, "bfloat16", target, "full")
        record = {"target": vars(target), "configured": vars(plan.setting_of(spec)),
                  "modes": {"full": {"parameters": vars(shape), "configured": plan.as_dict(est),
                                     "checkpoint_bytes": plan.checkpoint_bytes(shape, "bfloat16", "full"),
                                     "output_bytes": plan.output_bytes(shape, "bfloat16", "full"),
                                     "flops_per_token": 6 * shape.total}}}
        (tmp_path / "results/plan").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"results/plan/{model}.json").write_text(json.dumps(record))
    result = snakemake(tmp_path, "-n", configfile=configfile)
    assert result.returncode == 0, result.output[-3000:]
    assert job_counts(result.output)["plan"] == 3  # the other three models
    jobs = result.output.split("\n\n")
    gpt2 = next(j for j in jobs if "rule adapt:" in j and "model=gpt2," in j)
    llama = next(j for j in jobs if "rule adapt:" in j and "model=llama-7b," in j)
    memory = {name: int(re.search(r"mem_mb=(\d+)", job)[1]) for name, job in (("gpt2", gpt2), ("llama", llama))}
    assert 3000 < memory["gpt2"] < 8000 and 150_000 < memory["llama"] < 250_000, memory
    assert "gpu=1" in gpt2 and "disk_mb=" in llama


def test_lint_is_clean():
    result = subprocess.run([SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr, result.stdout


def test_rules_are_snakefmt_formatted():
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent))
    assert snakefmt, "snakefmt is a dev dependency"
    result = subprocess.run([snakefmt, "--check", "Snakefile", "workflow"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
