"""The demo DAG end to end: every stage's outputs, tables and figures, the table CLI and the report;
read-only checks of the one demo run that the tests share (``demo_run``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from analysis.corpora import catalogue
from tests.builders import REPO
from tests.workflow import snakemake

pytestmark = pytest.mark.integration


def test_demo_dag_produces_every_sample(demo_run):
    workdir, configfile = demo_run
    import json

    from analysis.corpora.sampling import domain_sample_size

    cfg = yaml.safe_load(configfile.read_text())
    sampling = cfg["sampling"]
    for domain in cfg["domains"]["adaptation"]:
        table = pq.read_table(workdir / f"results/samples/domains/{domain}.parquet")
        record = json.loads((workdir / f"results/samples/domains/{domain}.json").read_text())
        expected = domain_sample_size(record["n_available"], sampling["domain_fraction"], sampling["domain_max_texts"],
                                      sampling["domain_min_texts"])
        assert table.num_rows == record["n_sampled"] == expected
        assert set(table.column_names) == {"text", "split", "source_index"}
        assert (workdir / f"results/logs/sample_domain/{domain}.log").is_file()
    sources = pq.read_table(workdir / "results/samples/sources/webtext.parquet")
    assert sources.num_rows == cfg["corpora"]["webtext"]["n_texts"]
    assert (workdir / "resources/demo/m2d2/math.AG.tar.gz").is_file()


def test_demo_similarity_wiki_like_domains_are_closer_than_s2orc_like(demo_run):
    import pandas as pd

    workdir, configfile = demo_run
    table = pd.read_csv(workdir / "results/tables/similarity.tsv", sep="\t")
    domains = yaml.safe_load(configfile.read_text())["domains"]["adaptation"]
    assert len(table) == len(domains) and set(table["portion"]) == {"wiki", "s2orc"}
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
    assert set(cfg["adaptation"]["modes"]) == {"full", "sparse"}  # the checks below compare the two
    for domain in cfg["domains"]["adaptation"]:
        memory = {}
        for mode in cfg["adaptation"]["modes"]:
            run = workdir / f"results/adapted/tiny-gpt2/keep/{mode}/{domain}"
            metrics = json.loads((run / "metrics.json").read_text())
            assert metrics["steps"] > 0 and metrics["final"]["valid_loss"] < metrics["initial"]["valid_loss"]
            memory[mode] = json.loads((run / "memory.json").read_text())["saved_for_backward_bytes"]
            assert len((run / "curves.tsv").read_text().splitlines()) == 1 + cfg["adaptation"]["curve_points"]
        assert memory["sparse"] < memory["full"]
        assert (workdir / f"results/adapted/tiny-gpt2/keep/full/{domain}/weights/model.safetensors").is_file()
        assert (workdir / f"results/adapted/tiny-gpt2/keep/sparse/{domain}/weights/delta.safetensors").is_file()
    assert not any((workdir / "checkpoints").rglob("*.pt"))  # removed once outputs are written


def test_demo_perplexity_tables_and_figures(demo_run):
    import json

    import numpy as np
    import pandas as pd

    workdir, configfile = demo_run
    cfg = yaml.safe_load(configfile.read_text())
    domains, modes = cfg["domains"]["adaptation"], cfg["adaptation"]["modes"]
    results = workdir / "results"
    table = pd.read_csv(results / "tables/perplexity.tsv", sep="\t")
    ablation = cfg["adaptation"]["join_ablation"]
    other_policies = [p for p in ablation["policies"] if p != cfg["adaptation"]["join_policy"]]
    assert len(table) == len(modes) * len(domains) + len(other_policies) * len(ablation["domains"])
    table = table[table["train_policy"] == cfg["adaptation"]["join_policy"]]
    assert len(table) == len(modes) * len(domains) and set(table["mode"]) == set(modes)
    np.testing.assert_allclose(table["ppl_change"], table["ppl_zero_shot"] - table["ppl_adapted"])
    window = cfg["evaluation"].get("window") or cfg["models"]["tiny-gpt2"]["context_length"]
    assert (table["eval_policy"] == "keep").all() and (table["window"] == window).all()
    # The S2ORC-like demo domains are far from the base model's corpus: one epoch helps a lot there.
    assert (table.loc[(table["mode"] == "full") & (table["portion"] == "s2orc"), "ppl_change"] > 0).all()
    zero = json.loads((results / "eval/tiny-gpt2/zero_shot/hep-ex.json").read_text())
    tokens = json.loads((results / "tokens/tiny-gpt2/keep/hep-ex.json").read_text())
    assert zero["tokens"] == tokens["splits"]["test"]["tokens"] and zero["words"] == tokens["splits"]["test"]["words"]

    correlation = pd.read_csv(results / "tables/correlation.tsv", sep="\t")
    # The main grid (2 modes, trained on 'keep' text; portions all, wiki, s2orc) and the ablation's other
    # policies in mode full (its one S2ORC domain: portions all and s2orc), each with the plug-in and the
    # corrected distances.
    assert set(correlation["portion"]) == {"all", "wiki", "s2orc"}
    ablation_portions = 1 + len({catalogue.portion(d) for d in ablation["domains"]})  # "all" and theirs
    rows = (len(modes) * 3 + len(other_policies) * ablation_portions) * 2  # x 2 distance estimators
    assert len(correlation) == rows, correlation[["train_policy", "mode", "portion"]]
    overall = correlation[(correlation["portion"] == "all") & (correlation["train_policy"] == "keep")]
    assert (overall["n"] == len(domains)).all() and overall["pretraining_corpus"].all()
    plugin, corrected = (overall[overall["distance_estimator"] == e] for e in ("plugin", "corrected"))
    assert plugin[["spearman_mmd", "pearson_fd_p"]].notna().all().all() and (plugin["n_fd"] == len(domains)).all()
    # The demo's domains are too small for the corrected FD: no FD correlation on that row, MMD's there.
    assert corrected["spearman_mmd"].notna().all() and corrected["spearman_fd"].isna().all()
    assert (corrected["n_fd"] == 0).all()

    summary = pd.read_csv(results / "tables/tokens/tiny-gpt2/full/summary.tsv", sep="\t")
    assert len(summary) == 2 * len(domains) and set(summary["split"]) == {"train", "test"}
    assert (summary["chunks"] == cfg["evaluation"]["token_level"]["chunks"]).all()
    np.testing.assert_allclose(summary["whitespace_share"] + summary["other_share"], 1.0)
    per_token = pd.read_csv(results / "tables/tokens/tiny-gpt2/sparse/hep-ex.tsv", sep="\t", keep_default_na=False)
    assert per_token.groupby("split")["change_share"].sum().round(6).eq(1.0).all()
    for figure in ("perplexity_change", "tokens", "curves"):
        for mode in modes:
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
    assert set(table["train_policy"]) == set(ablation["policies"]) and (table["eval_policy"] == "keep").all()
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
    assert metrics["train_policy"] == "strip"
    assert (results / "figures/join_policy_tiny-gpt2.png").stat().st_size > 10_000


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


def test_demo_edge_stages(demo_run):
    import json

    import pandas as pd

    from analysis import config as config_lib

    workdir, configfile = demo_run
    edge = config_lib.load(configfile)["edge"]  # with the schema's defaults
    table = pd.read_csv(workdir / "results/edge/tables/transfer.tsv", sep="\t")
    budgets = edge["sparse"]["budgets_kib"]
    methods = [*edge["transfer"]["modes"], *(f"sparse@{b}KiB" for b in budgets)]
    assert list(dict.fromkeys(table["method"])) == methods
    batches = edge["transfer"]["memory_batch_sizes"]
    assert set(table["batch_size"]) == set(batches) and len(table) == len(batches) * len(methods)
    assert 8 in batches  # the checks below read the rows at batch size 8
    at8 = table[table["batch_size"] == 8].set_index("method")
    assert at8.loc["full", "extra_ratio_full"] == 1
    assert at8.loc["bias", "extra_kib"] < at8.loc["lite_residual", "extra_kib"] < at8.loc["full", "extra_kib"]
    assert at8.loc["full", "test_accuracy"] > 0.5  # three classes
    for budget in budgets:  # each scheme found fits its budget at the search's batch size
        assert at8.loc[f"sparse@{budget}KiB", "extra_kib"] <= budget
    layers = pd.read_csv(workdir / "results/edge/tables/memory_layers.tsv", sep="\t")
    assert layers["match"].all(), layers[~layers["match"]]  # the frugal layers keep what the rules say
    source = json.loads((workdir / "results/edge/source/metrics.json").read_text())
    assert source["test"]["accuracy"] > 0.8
    for figure in ("transfer_memory", "contributions", "sparse"):
        assert (workdir / f"results/edge/figures/{figure}.png").stat().st_size > 10_000


def test_demo_federated_and_leakage_stages(demo_run):
    import pandas as pd

    workdir, configfile = demo_run
    section = yaml.safe_load(configfile.read_text())["edge"]["federated"]
    federated = pd.read_csv(workdir / "results/edge/tables/federated.tsv", sep="\t")
    assert set(federated["partition"]) == set(section["partitions"])
    assert sorted(federated["round"].unique()) == list(range(section["rounds"] + 1))
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

    workdir, configfile = demo_run
    section = yaml.safe_load(configfile.read_text())["edge"]["compression"]
    table = pd.read_csv(workdir / "results/edge/tables/compression.tsv", sep="\t")
    assert table.iloc[0]["family"] == "reference" and table.iloc[0]["compression_ratio"] == 1
    quantized = table[table["family"] == "k-means quantization"]
    assert section["quantization"]["kmeans_bits"] == [2]
    assert len(quantized) == 1 and quantized.iloc[0]["compression_ratio"] > 3  # 2-bit weights
    # Labels only, then one student per temperature.
    assert len(table[table["family"] == "distillation"]) == 1 + len(section["distillation"]["temperatures"])
    sensitivity = pd.read_csv(workdir / "results/edge/tables/sensitivity.tsv", sep="\t")
    assert set(sensitivity["sparsity"]) == set(section["pruning"]["scan_sparsities"])
    for figure in ("compression", "sensitivity"):
        assert (workdir / f"results/edge/figures/{figure}.png").stat().st_size > 10_000
