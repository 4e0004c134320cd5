"""What a finished run prints: its tables and figures and headline numbers, or the failed job's log."""

from __future__ import annotations

import pandas as pd

from analysis.run_summary import failure_summary, success_summary


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


def test_success_summary_lists_outputs_and_reads_headlines_from_the_tables(tmp_path):
    results = tmp_path / "results"
    write(results / "tables/similarity.tsv", [
        {"corpus": "web", "domain": d, "portion": p, "mmd": m + 0.01, "mmd_unbiased": m, "fd": f,
         "fd_corrected": None}
        for d, p, m, f in (("a", "wiki", 0.2, 0.8), ("b", "wiki", 0.4, 1.0), ("c", "s2orc", 0.5, 1.5))])
    write(results / "tables/perplexity.tsv", [
        {"model": "m", "mode": "full", "train_policy": "keep", "ppl_change": c, "ppl_change_percent": 10 * c}
        for c in (1.0, 2.0, -0.5)])
    (results / "figures").mkdir()
    (results / "figures/similarity_web.png").write_bytes(b"png")
    text = success_summary(results, {"similarity": {"estimator": "corrected"}, "adaptation": {"join_policy": "keep"}})
    assert "2 tables and 1 figures" in text and "tables/similarity.tsv" in text and "similarity_web.png" in text
    # Unbiased MMD by portion (0.3 vs 0.5); the plug-in FD, since no domain has a corrected one.
    assert "MMD (unbiased) 0.3 vs 0.5; FD (plug-in) 0.9 vs 1.5" in text
    assert "m full: +8.3% (2/3 domains better)" in text
    assert "edge transfer" not in text  # no edge tables in this run: no line, no error
    assert "python -m analysis show" in text and "snakemake --report report.html" in text


def test_a_baseline_worse_than_uniform_and_a_capped_run_are_named_beside_the_headline(tmp_path):
    results = tmp_path / "results"
    rows = [{"model": "tiny", "mode": "full", "train_policy": "keep", "domain": d, "ppl_zero_shot": z,
             "ppl_change": z / 2, "ppl_change_percent": 50.0, "vocab_size": 4096, "max_train_tokens": cap}
            for d, z, cap in (("a", 27662.0, None), ("b", 300.0, None), ("c", 39624.0, None))]
    write(results / "tables/perplexity.tsv", rows)
    text = success_summary(results, {"adaptation": {"join_policy": "keep"}})
    assert "test perplexity after one epoch" in text
    assert ("NOTE: tiny's zero-shot perplexity exceeds its vocabulary size (4,096) on 2/3 domains: worse than "
            "guessing uniformly") in text and "presets/smollm2-quick.yaml" in text
    write(results / "tables/perplexity.tsv", [{**r, "ppl_zero_shot": 20.0, "max_train_tokens": 12288} for r in rows])
    text = success_summary(results, {"adaptation": {"join_policy": "keep"}})
    assert "after at most 12,288 train tokens per run (not one epoch)" in text and "NOTE" not in text


def test_failure_summary_quotes_the_end_of_each_failed_jobs_log(tmp_path):
    (tmp_path / "results/logs").mkdir(parents=True)
    (tmp_path / "results/logs/adapt.log").write_text("".join(f"line {i}\n" for i in range(40)) + "ERROR: bad\n")
    snakemake_log = tmp_path / "run.log"
    snakemake_log.write_text(
        "[Sun Nov 29 14:36:31 2026]\nError in rule adapt:\n    message: None\n    jobid: 3\n"
        "    log: results/logs/adapt.log (check log file(s) for error details)\n"
        "Error in rule plan:\n    jobid: 4\n    log: results/logs/plan.log (check log file(s) for error details)\n"
    )
    text = failure_summary(snakemake_log, tmp_path, tail=3)
    assert "Rule adapt failed; its log results/logs/adapt.log ends with:\n  | line 38\n  | line 39\n  | ERROR: bad" in text
    assert "Rule plan failed; its log results/logs/plan.log ends with:\n  | (the log was not written)" in text
    assert f"Snakemake's own log: {snakemake_log}" in text
    assert "cannot be read" in failure_summary(tmp_path / "missing.log")
    assert failure_summary([str(snakemake_log)], tmp_path, tail=3) == text  # as Snakemake's onerror passes it
