"""Reruns: what a changed config, a forced or deleted output, a killed or signalled job recomputes
(dry runs on the shared demo run; real reruns on a copy of it, ``demo_copy``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from tests.builders import REPO
from tests.workflow import SNAKEMAKE, job_counts, job_environment, snakemake

pytestmark = pytest.mark.integration


def test_zero_shot_does_not_wait_for_adaptation(demo_run):
    workdir, configfile = demo_run
    result = snakemake(workdir, "-n", "--forceall", "results/eval/tiny-gpt2/zero_shot/hep-ex.json",
                       configfile=configfile)
    counts = job_counts(result.output)
    assert counts["zero_shot"] == 1 and "adapt" not in counts and "pretrain_base" in counts


def test_a_new_budget_runs_only_its_search(demo_run, tmp_path):
    workdir, configfile = demo_run
    cfg = yaml.safe_load(configfile.read_text())
    cfg["edge"]["sparse"]["budgets_kib"] = [16, 64, 32]
    extended = tmp_path / "budgets.yaml"
    extended.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = snakemake(workdir, "-n", configfile=extended)
    assert result.returncode == 0, result.output[-3000:]
    assert job_counts(result.output) == {"edge_sparse": 1, "edge_tables": 1, "all": 1}
    assert "wildcards: budget=32" in result.output


def test_each_corpus_and_domain_is_embedded_once(demo_run):
    workdir, configfile = demo_run
    domains = len(yaml.safe_load(configfile.read_text())["domains"]["adaptation"])
    result = snakemake(workdir, "-n", "--forceall", configfile=configfile)
    counts = job_counts(result.output)
    assert counts["embed"] == 1 + domains  # C + D, not C x D
    assert counts["corpus_statistics"] == 1  # each corpus' moments once, read by its C x D distances
    assert counts["plan"] == 1  # one memory plan per model, before its adapt jobs
    assert counts["distance"] == 1 * domains


def test_forcing_one_domain_reruns_only_its_dependents(demo_run):
    workdir, configfile = demo_run
    forced = "results/adapted/tiny-gpt2/keep/full/hep-ex/metrics.json"
    result = snakemake(workdir, "-n", "--forcerun", forced, configfile=configfile)
    assert result.returncode == 0, result.output[-3000:]
    counts = job_counts(result.output)
    # The run, its evaluation, and the tables and figures that gather it (Figure 1 of both modes
    # reads the perplexity table); no other domain, no zero-shot, no similarity job.
    assert counts == {"adapt": 1, "evaluate": 1, "perplexity_table": 1, "correlation_table": 1,
                      "perplexity_figure": 2, "token_tables": 1, "curves_figure": 1, "join_policy_table": 1,
                      "all": 1}, counts
    assert "wildcards: model=tiny-gpt2, train_policy=keep, mode=full, domain=hep-ex" in result.output


def test_adding_a_domain_computes_only_that_domain_and_the_aggregates(demo_run, tmp_path):
    workdir, configfile = demo_run
    cfg = yaml.safe_load(configfile.read_text())
    cfg["domains"]["adaptation"].append("cond-mat.str-el")
    extended = tmp_path / "extended.yaml"
    extended.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = snakemake(workdir, "-n", configfile=extended)
    assert result.returncode == 0, result.output[-3000:]
    counts = job_counts(result.output)
    # One new domain: its sample, embedding, distance, tokens, zero-shot, two modes; then the tables.
    for rule, n in {"sample_domain": 1, "embed": 1, "distance": 1, "tokenize_domain": 1, "zero_shot": 1,
                    "adapt": 2, "evaluate": 2}.items():
        assert counts.get(rule) == n, counts
    assert "pretrain_base" not in counts and "sample_source" not in counts
    assert "corpus_statistics" not in counts  # the corpus is not read again
    domains = set(re.findall(r"wildcards: .*domain=([\w.-]+)", result.output))
    assert domains == {"cond-mat.str-el"}, domains


def test_nothing_reruns_when_up_to_date(demo_run):
    workdir, configfile = demo_run
    result = snakemake(workdir, "-n", configfile=configfile)
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr


def test_recomputed_sample_is_identical(demo_copy):
    workdir, configfile = demo_copy
    target = workdir / "results/samples/domains/hep-ex.parquet"
    before = pq.read_table(target).to_pydict()
    target.unlink()
    result = snakemake(workdir, configfile=configfile)
    assert result.returncode == 0, result.output[-3000:]
    assert pq.read_table(target).to_pydict() == before
    assert "rule sample_domain" in result.output and "rule sample_source" not in result.output
    assert result.output.count("rule embed:") == 1 and result.output.count("rule distance:") == 1


def test_killed_adapt_job_resumes_from_its_checkpoint_to_the_same_weights(demo_copy):
    """kill -9 of the whole Snakemake process group mid-training, then the usual rerun."""
    import signal
    import time

    from safetensors.torch import load_file

    workdir, demo_configfile = demo_copy
    # Checkpoints every 5 steps (they do not change the arithmetic): the tiny run lasts ~1 s.
    cfg = yaml.safe_load(demo_configfile.read_text())
    cfg["adaptation"]["checkpoint_every"] = 5
    configfile = workdir / "checkpoint_every.yaml"
    configfile.write_text(yaml.safe_dump(cfg, sort_keys=False))
    target = "results/adapted/tiny-gpt2/keep/full/hep-ex/metrics.json"  # relative to the workdir, like the rule
    run = workdir / "results/adapted/tiny-gpt2/keep/full/hep-ex"
    reference = load_file(str(run / "weights/model.safetensors"))
    shutil.rmtree(run)
    checkpoint = workdir / "checkpoints/adapt/tiny-gpt2/keep/full/hep-ex/latest"
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2",
               target, "--configfile", str(configfile)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=job_environment(),
                               start_new_session=True)
    deadline = time.monotonic() + 300
    # `latest` with its tag written (a kill between its creation and the write is handled too:
    # train.resumable_tag, tests/test_lm.py).
    while not (checkpoint.exists() and checkpoint.read_text().strip()) and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    finished = process.poll() is not None
    if not finished:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not finished and checkpoint.exists(), process.stdout.read().decode()[-3000:]
    snakemake(workdir, "--unlock", configfile=configfile)
    result = snakemake(workdir, target, configfile=configfile)
    assert result.returncode == 0, result.output[-3000:]
    log = (workdir / "results/logs/adapt/tiny-gpt2/keep/full/hep-ex.log").read_text()
    assert "resumed from checkpoints/adapt/tiny-gpt2/keep/full/hep-ex" in log
    resumed = load_file(str(run / "weights/model.safetensors"))
    assert max(float((resumed[k] - reference[k]).abs().max()) for k in reference) < 1e-5


def test_sigterm_checkpoints_and_the_retry_resumes_to_the_same_weights(demo_copy):
    """SIGTERM to the training process mid-epoch, as SLURM sends it at preemption or at the time
    limit: the job saves a checkpoint and fails; Snakemake's retry resumes from that checkpoint."""
    import signal
    import time

    from safetensors.torch import load_file

    workdir, configfile = demo_copy
    target = "results/adapted/tiny-gpt2/keep/full/hep-ex/metrics.json"
    run = workdir / "results/adapted/tiny-gpt2/keep/full/hep-ex"
    log = workdir / "results/logs/adapt/tiny-gpt2/keep/full/hep-ex.log"
    reference = load_file(str(run / "weights/model.safetensors"))
    shutil.rmtree(run)
    log.unlink()
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", "--retries", "1",
               target, "--configfile", str(configfile)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=job_environment(),
                               text=True)
    deadline, signalled = time.monotonic() + 300, None
    while signalled is None and process.poll() is None and time.monotonic() < deadline:
        if log.is_file() and "'step': 0" in log.read_text(errors="replace"):  # the epoch has begun
            # The Python process itself, not the bash that Snakemake starts it from.
            pattern = f"^{re.escape(sys.executable)} .*adapt.py.*keep/full/hep-ex"
            found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
            if found:
                signalled = int(found[0])
                os.kill(signalled, signal.SIGTERM)
        time.sleep(0.005)
    output = process.communicate(timeout=600)[0]
    assert signalled is not None and process.returncode == 0, output[-3000:]
    assert "Error in rule adapt" in output  # the first attempt stopped ...
    resumed = re.search(r"resumed from checkpoints/adapt/tiny-gpt2/keep/full/hep-ex at step (\d+) of (\d+)",
                        log.read_text())
    assert resumed and 0 < int(resumed[1]) < int(resumed[2]), output[-3000:]  # ... and the retry went on
    weights = load_file(str(run / "weights/model.safetensors"))
    assert max(float((weights[k] - reference[k]).abs().max()) for k in reference) < 1e-5


def test_bad_config_stops_before_any_job_and_keeps_results(demo_run, tmp_path):
    workdir, configfile = demo_run
    cfg = yaml.safe_load(configfile.read_text())
    cfg["sampling"]["domain_fracton"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    existing = sorted((workdir / "results/samples").rglob("*"))
    result = snakemake(workdir, "--forceall", configfile=bad)
    assert result.returncode != 0
    assert f"{bad}: unknown key 'sampling.domain_fracton'" in result.output
    assert "Traceback" not in result.output
    assert sorted((workdir / "results/samples").rglob("*")) == existing
