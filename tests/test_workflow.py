"""The workflow itself: the demo DAG end to end, reruns, the table CLI, the report, bad input, lint."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.builders import REPO

pytestmark = pytest.mark.integration
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def job_environment() -> dict[str, str]:
    """This environment without the variables of this process's own single-rank DeepSpeed group
    (set by the in-process training tests): a job inheriting them would reuse a taken port."""
    distributed = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    return {k: v for k, v in os.environ.items() if k not in distributed} | {"PYTHONUNBUFFERED": "1"}


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
    cfg["adaptation"]["join_ablation"]["policies"] = ["keep", "strip", "paragraph"]  # the demo runs two
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


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    configfile = small_demo_config(workdir / "config.yaml")
    # ~8 minutes on 2 quiet cores; the limit only guards against a hang.
    result = snakemake(workdir, configfile=configfile, timeout=1500)
    assert result.returncode == 0, result.output[-4000:]
    # The run's closing words (onsuccess): what it made and its headline numbers, from its tables.
    assert "Headline numbers of this run:" in result.output and "Wikipedia vs S2ORC domains" in result.output
    return workdir, configfile


@pytest.fixture
def demo_copy(demo_run, tmp_path):
    """A copy of the demo run (outputs, checkpoints and Snakemake's records, modification times
    kept) for a test that deletes or rebuilds outputs: the shared run stays as the read-only tests
    expect it, whatever the order the tests run in."""
    workdir, configfile = demo_run
    copy = tmp_path / "demo"
    shutil.copytree(workdir, copy, symlinks=True)
    return copy, copy / configfile.relative_to(workdir)


def test_demo_dag_produces_every_sample(demo_run):
    workdir, configfile = demo_run
    cfg = yaml.safe_load(configfile.read_text())
    for domain in cfg["domains"]["adaptation"]:
        table = pq.read_table(workdir / f"results/samples/domains/{domain}.parquet")
        assert table.num_rows == 100 and set(table.column_names) == {"text", "split", "source_index"}
        assert (workdir / f"results/samples/domains/{domain}.json").is_file()
        assert (workdir / f"results/logs/sample_domain/{domain}.log").is_file()
    assert pq.read_table(workdir / "results/samples/sources/webtext.parquet").num_rows == 300
    assert (workdir / "resources/demo/m2d2/math.AG.tar.gz").is_file()


def test_demo_similarity_wiki_like_domains_are_closer_than_s2orc_like(demo_run):
    import pandas as pd

    workdir, _ = demo_run
    table = pd.read_csv(workdir / "results/tables/similarity.tsv", sep="\t")
    assert len(table) == 6 and set(table["portion"]) == {"wiki", "s2orc"}
    for measure in ("mmd", "fd", "mmd_unbiased"):
        by_portion = table.groupby("portion")[measure]
        assert by_portion.max()["wiki"] < by_portion.min()["s2orc"], table[["domain", measure]]
        assert ((table[f"{measure}_ci_low"] < table[measure]) & (table[measure] < table[f"{measure}_ci_high"])).all()
    # The demo's domains (100 texts at d = 384) are below the FD extrapolation's smallest size.
    assert table["fd_corrected"].isna().all() and table["note"].str.contains("no corrected FD: the domain holds").all()
    assert (workdir / "results/tables/similarity.md").read_text().startswith("# Similarity")
    assert (workdir / "results/figures/similarity_webtext.png").stat().st_size > 10_000


def test_demo_base_model_and_adaptation_in_every_mode(demo_run):
    import json

    workdir, configfile = demo_run
    cfg = yaml.safe_load(configfile.read_text())
    base = json.loads((workdir / "results/models/tiny-gpt2/metrics.json").read_text())
    assert base["heldout_perplexity"] < base["unigram_perplexity"] / 3  # it learnt its corpus
    for domain in cfg["domains"]["adaptation"]:
        memory = {}
        for mode in ("full", "sparse"):
            run = workdir / f"results/adapted/tiny-gpt2/keep/{mode}/{domain}"
            metrics = json.loads((run / "metrics.json").read_text())
            assert metrics["steps"] > 0 and metrics["final"]["valid_loss"] < metrics["initial"]["valid_loss"]
            memory[mode] = json.loads((run / "memory.json").read_text())["saved_for_backward_bytes"]
            assert len((run / "curves.tsv").read_text().splitlines()) == 1 + 3
        assert memory["sparse"] < memory["full"]
        assert (workdir / f"results/adapted/tiny-gpt2/keep/full/{domain}/weights/model.safetensors").is_file()
        assert (workdir / f"results/adapted/tiny-gpt2/keep/sparse/{domain}/weights/delta.safetensors").is_file()
    assert not any((workdir / "checkpoints").rglob("*.pt"))  # removed once outputs are written


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


def test_demo_perplexity_tables_and_figures(demo_run):
    import json

    import numpy as np
    import pandas as pd

    workdir, configfile = demo_run
    domains = yaml.safe_load(configfile.read_text())["domains"]["adaptation"]
    results = workdir / "results"
    table = pd.read_csv(results / "tables/perplexity.tsv", sep="\t")
    ablation = yaml.safe_load(configfile.read_text())["adaptation"]["join_ablation"]
    assert len(table) == 2 * len(domains) + 2 * len(ablation["domains"])
    table = table[table["train_policy"] == "keep"]
    assert len(table) == 2 * len(domains) and set(table["mode"]) == {"full", "sparse"}
    np.testing.assert_allclose(table["ppl_change"], table["ppl_zero_shot"] - table["ppl_adapted"])
    assert (table["eval_policy"] == "keep").all() and (table["window"] == 32).all()
    # The S2ORC-like demo domains are far from the base model's corpus: one epoch helps a lot there.
    assert (table.loc[(table["mode"] == "full") & (table["portion"] == "s2orc"), "ppl_change"] > 0).all()
    zero = json.loads((results / "eval/tiny-gpt2/zero_shot/hep-ex.json").read_text())
    tokens = json.loads((results / "tokens/tiny-gpt2/keep/hep-ex.json").read_text())
    assert zero["tokens"] == tokens["splits"]["test"]["tokens"] and zero["words"] == tokens["splits"]["test"]["words"]

    correlation = pd.read_csv(results / "tables/correlation.tsv", sep="\t")
    # The main grid (2 modes, trained on 'keep' text) and the ablation's other policies in mode full, each
    # with the plug-in and the corrected distances.
    assert set(correlation["portion"]) == {"all", "wiki", "s2orc"} and len(correlation) == (2 + 2) * 3 * 2
    overall = correlation[(correlation["portion"] == "all") & (correlation["train_policy"] == "keep")]
    assert (overall["n"] == len(domains)).all() and overall["pretraining_corpus"].all()
    plugin, corrected = (overall[overall["distance_estimator"] == e] for e in ("plugin", "corrected"))
    assert plugin[["spearman_mmd", "pearson_fd_p"]].notna().all().all() and (plugin["n_fd"] == len(domains)).all()
    # The demo's domains are too small for the corrected FD: no FD correlation on that row, MMD's there.
    assert corrected["spearman_mmd"].notna().all() and corrected["spearman_fd"].isna().all()
    assert (corrected["n_fd"] == 0).all()

    summary = pd.read_csv(results / "tables/tokens/tiny-gpt2/full/summary.tsv", sep="\t")
    assert len(summary) == 2 * len(domains) and set(summary["split"]) == {"train", "test"}
    assert (summary["chunks"] == 4).all()
    np.testing.assert_allclose(summary["whitespace_share"] + summary["other_share"], 1.0)
    per_token = pd.read_csv(results / "tables/tokens/tiny-gpt2/sparse/hep-ex.tsv", sep="\t", keep_default_na=False)
    assert per_token.groupby("split")["change_share"].sum().round(6).eq(1.0).all()
    for figure in ("perplexity_change", "tokens", "curves"):
        for mode in ("full", "sparse"):
            assert (results / f"figures/{figure}_tiny-gpt2_{mode}.png").stat().st_size > 10_000


def test_demo_join_policy_ablation(demo_run):
    import json

    import numpy as np
    import pandas as pd

    workdir, configfile = demo_run
    ablation = yaml.safe_load(configfile.read_text())["adaptation"]["join_ablation"]
    results = workdir / "results"
    table = pd.read_csv(results / "tables/join_policy.tsv", sep="\t")
    assert len(table) == len(ablation["policies"]) * len(ablation["domains"])
    assert set(table["train_policy"]) == {"keep", "strip", "paragraph"} and (table["eval_policy"] == "keep").all()
    np.testing.assert_allclose(table["nll_change_whitespace"] + table["nll_change_other"], table["nll_change_total"])
    # The 'keep' run is the main grid's full run, computed once.
    main = pd.read_csv(results / "tables/perplexity.tsv", sep="\t").query("mode == 'full' and train_policy == 'keep'")
    keep = table[table["train_policy"] == "keep"].merge(main, on="domain", suffixes=("", "_main"))
    np.testing.assert_allclose(keep["ppl_adapted"], keep["ppl_adapted_main"])
    # Trained on stripped lines the model never sees a newline: newline tokens get worse than under 'keep'.
    newline = table.pivot(index="domain", columns="train_policy", values="ppl_newline_adapted")
    assert (newline["strip"] > newline["keep"]).all(), newline
    strip = json.loads((results / "tokens/tiny-gpt2/strip/hep-ex.json").read_text())
    assert strip["join_policy"] == "strip" and not strip["eos_after_each_text"]
    metrics = json.loads((results / "adapted/tiny-gpt2/strip/full/hep-ex/metrics.json").read_text())
    assert metrics["join_policy"] == "strip"
    assert (results / "figures/join_policy_tiny-gpt2.png").stat().st_size > 10_000


def test_zero_shot_does_not_wait_for_adaptation(demo_run):
    workdir, configfile = demo_run
    result = snakemake(workdir, "-n", "--forceall", "results/eval/tiny-gpt2/zero_shot/hep-ex.json",
                       configfile=configfile)
    counts = job_counts(result.output)
    assert counts["zero_shot"] == 1 and "adapt" not in counts and "pretrain_base" in counts


def show(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis", "show", *args, "--results", str(workdir / "results")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_show_prints_filtered_tables(demo_run):
    import json

    workdir, _ = demo_run
    rows = json.loads(show(workdir, "perplexity", "--model", "tiny-gpt2", "--domain", "hep-ex", "--format",
                           "json").stdout)
    assert [(r["mode"], r["train_policy"]) for r in rows] == [("full", "keep"), ("sparse", "keep"), ("full", "strip"),
                                                              ("full", "paragraph")]
    markdown = show(workdir, "correlation", "--mode", "full", "--train-policy", "keep", "--portion", "all",
                    "--distance-estimator", "plugin").stdout
    assert markdown.startswith("| model | mode | train_policy | corpus |") and len(markdown.splitlines()) == 3
    ablation = json.loads(show(workdir, "join_policy", "--domain", "hep-ex", "--format", "json").stdout)
    assert sorted(r["train_policy"] for r in ablation) == ["keep", "paragraph", "strip"]
    tokens = show(workdir, "tokens", "--model", "tiny-gpt2", "--mode", "full", "--domain", "hep-ex", "--split",
                  "test", "--limit", "5", "--columns", "token,count,change_share", "--format", "tsv").stdout
    assert tokens.splitlines()[0] == "token\tcount\tchange_share" and len(tokens.splitlines()) == 6
    missing = show(workdir, "perplexity", "--domain", "hep-lat")
    assert missing.returncode == 2 and "domain 'hep-lat' is not in table 'perplexity'; it has: " in missing.stderr
    assert "Traceback" not in missing.stderr
    absent = show(workdir.parent, "perplexity")
    assert absent.returncode == 2 and "does not exist: build it first" in absent.stderr


def test_report_renders_every_table_and_figure(demo_run):
    workdir, configfile = demo_run
    result = snakemake(workdir, "--report", "report.html", configfile=configfile)
    assert result.returncode == 0, result.output[-3000:]
    html = (workdir / "report.html").read_text(errors="replace")
    for name in ("perplexity.tsv", "correlation.tsv", "similarity.tsv", "perplexity_change_tiny-gpt2_full.png",
                 "tokens_tiny-gpt2_sparse.png", "curves_tiny-gpt2_full.png", "hep-ex.tsv", "join_policy.tsv",
                 "join_policy_tiny-gpt2.png", "transfer_memory.png", "memory_layers.tsv", "contributions.png",
                 "federated.tsv", "leakage.tsv", "leakage_reconstructions.png", "compression.tsv"):
        assert name in html, name


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake dry run, as {rule: count}."""
    counts = {}
    for line in output.split("Job stats:")[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_demo_edge_stages(demo_run):
    import json

    import pandas as pd

    workdir, configfile = demo_run
    edge = yaml.safe_load(configfile.read_text())["edge"]
    table = pd.read_csv(workdir / "results/edge/tables/transfer.tsv", sep="\t")
    methods = [*edge["transfer"]["modes"], "sparse@16KiB", "sparse@64KiB"]
    assert list(dict.fromkeys(table["method"])) == methods
    assert set(table["batch_size"]) == {1, 8} and len(table) == 2 * len(methods)
    at8 = table[table["batch_size"] == 8].set_index("method")
    assert at8.loc["full", "extra_ratio_full"] == 1
    assert at8.loc["bias", "extra_kib"] < at8.loc["lite_residual", "extra_kib"] < at8.loc["full", "extra_kib"]
    assert at8.loc["full", "test_accuracy"] > 0.5  # three classes
    for budget in (16, 64):  # each scheme found fits its budget at the search's batch size
        assert at8.loc[f"sparse@{budget}KiB", "extra_kib"] <= budget
    layers = pd.read_csv(workdir / "results/edge/tables/memory_layers.tsv", sep="\t")
    assert layers["match"].all(), layers[~layers["match"]]  # the frugal layers keep what the rules say
    source = json.loads((workdir / "results/edge/source/metrics.json").read_text())
    assert source["test"]["accuracy"] > 0.8
    for figure in ("transfer_memory", "contributions", "sparse"):
        assert (workdir / f"results/edge/figures/{figure}.png").stat().st_size > 10_000


def test_demo_federated_and_leakage_stages(demo_run):
    import pandas as pd

    workdir, _ = demo_run
    federated = pd.read_csv(workdir / "results/edge/tables/federated.tsv", sep="\t")
    assert set(federated["partition"]) == {"iid", "dirichlet"}
    assert sorted(federated["round"].unique()) == [0, 1, 2]
    leakage = pd.read_csv(workdir / "results/edge/tables/leakage.tsv", sep="\t")
    # no laplacian job: its strength list is empty
    assert list(dict.fromkeys(leakage["defense"])) == ["none", "gaussian", "prune"]
    clear = leakage[(leakage["defense"] == "none") & (leakage["batch_size"] == 1)]
    assert (clear["psnr_db"] > 30).all(), clear  # one image is recovered from its gradient
    pruned = leakage[leakage["defense"] == "prune"]
    assert (pruned["psnr_db"] < 20).all(), pruned
    for figure in ("federated", "leakage_reconstructions", "leakage_defenses"):
        assert (workdir / f"results/edge/figures/{figure}.png").stat().st_size > 10_000


def test_demo_compression_stages(demo_run):
    import pandas as pd

    workdir, _ = demo_run
    table = pd.read_csv(workdir / "results/edge/tables/compression.tsv", sep="\t")
    assert table.iloc[0]["family"] == "reference" and table.iloc[0]["compression_ratio"] == 1
    quantized = table[table["family"] == "k-means quantization"]
    assert len(quantized) == 1 and quantized.iloc[0]["compression_ratio"] > 3  # 2-bit weights
    assert len(table[table["family"] == "distillation"]) == 2  # labels only, T=4
    sensitivity = pd.read_csv(workdir / "results/edge/tables/sensitivity.tsv", sep="\t")
    assert set(sensitivity["sparsity"]) == {0.5}
    for figure in ("compression", "sensitivity"):
        assert (workdir / f"results/edge/figures/{figure}.png").stat().st_size > 10_000


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


def test_each_corpus_and_domain_is_embedded_once(demo_run):
    workdir, configfile = demo_run
    result = snakemake(workdir, "-n", "--forceall", configfile=configfile)
    counts = job_counts(result.output)
    assert counts["embed"] == 1 + 6  # C + D, not C x D
    assert counts["corpus_statistics"] == 1  # each corpus' moments once, read by its C x D distances
    assert counts["plan"] == 1  # one memory plan per model, before its adapt jobs
    assert counts["distance"] == 1 * 6


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
    assert "wildcards: model=tiny-gpt2, policy=keep, mode=full, domain=hep-ex" in result.output


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
