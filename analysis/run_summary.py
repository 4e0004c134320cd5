"""What a finished run prints: the tables and figures it made and its headline numbers, or, when a job
failed, that job's log.

Called by the Snakefile's ``onsuccess`` and ``onerror`` handlers. Every number is read from the
run's own tables; a table the run did not make (a target that leaves it out, the edge stages
disabled) is left out of the summary, and a summary never fails the run.
"""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd

from analysis.tables.similarity import drawn_distances

log = logging.getLogger(__name__)


def _mean_by(frame: pd.DataFrame, key: str, value: str) -> dict[str, float]:
    return frame.groupby(key)[value].mean().to_dict()


def similarity_headline(results: Path, config: Mapping) -> str | None:
    table = pd.read_csv(results / "tables/similarity.tsv", sep="\t")
    corpus = table["corpus"].iloc[0]
    rows = table[table["corpus"] == corpus]
    drawn = drawn_distances(rows, config.get("similarity", {}).get("estimator", "corrected"))
    parts = []
    for measure in ("mmd", "fd"):
        column, label, _ = drawn[measure]
        means = _mean_by(rows, "portion", column)
        parts.append(f"{label} {means.get('wiki', float('nan')):.3g} vs {means.get('s2orc', float('nan')):.3g}")
    return f"distance to '{corpus}', Wikipedia vs S2ORC domains (mean): " + "; ".join(parts)


def perplexity_headline(results: Path, config: Mapping) -> str | None:
    table = pd.read_csv(results / "tables/perplexity.tsv", sep="\t")
    train_policy = config.get("adaptation", {}).get("join_policy", "keep")
    table = table[table["train_policy"] == train_policy]
    parts, uniform = [], []
    for (model, mode), group in table.groupby(["model", "mode"], sort=False):
        better = int((group["ppl_change"] > 0).sum())
        parts.append(f"{model} {mode}: {group['ppl_change_percent'].mean():+.1f}% "
                     f"({better}/{len(group)} domains better)")
    capped = table["max_train_tokens"].dropna() if "max_train_tokens" in table else pd.Series(dtype=float)
    training = (f"at most {int(capped.max()):,} train tokens per run (not one epoch)" if len(capped)
                else "one epoch")
    text = f"test perplexity after {training}, mean change (positive: better): " + "; ".join(parts)
    if "vocab_size" in table:
        for model, group in table.drop_duplicates(["model", "domain"]).groupby("model", sort=False):
            worse = group[group["ppl_zero_shot"] > group["vocab_size"]]
            if len(worse):
                uniform.append(f"{model}'s zero-shot perplexity exceeds its vocabulary size "
                               f"({int(worse['vocab_size'].iloc[0]):,}) on {len(worse)}/{len(group)} domains: "
                               "worse than guessing uniformly, so these changes start from a meaningless baseline")
    if uniform:
        text += "\n  NOTE: " + "; ".join(uniform) + (
            ". Real-model numbers: snakemake --cores 2 --configfile presets/smollm2-quick.yaml "
            "(SmolLM2-135M on real text, about 40 minutes on 2 cores).")
    return text


def newline_headline(results: Path, config: Mapping) -> str | None:
    table = pd.read_csv(results / "tables/join_policy.tsv", sep="\t")
    table = table[table["mode"] == "full"]
    means = _mean_by(table, "train_policy", "ppl_newline_change")
    if len(means) < 2:
        return None
    parts = [f"trained on '{train_policy}' text {change:+.3g}" for train_policy, change in means.items()]
    return "newline-token perplexity change (positive: better): " + "; ".join(parts)


def transfer_headline(results: Path, config: Mapping) -> str | None:
    table = pd.read_csv(results / "edge/tables/transfer.tsv", sep="\t")
    table = table[(table["kind"] == "mode")]
    table = table[table["batch_size"] == table["batch_size"].max()].set_index("method")
    parts = [f"{method} {100 * row['test_accuracy']:.0f}% at {row['training_kib']:.0f} KiB"
             for method, row in table.iterrows()]
    return "edge transfer, test accuracy at training memory: " + "; ".join(parts)


def leakage_headline(results: Path, config: Mapping) -> str | None:
    table = pd.read_csv(results / "edge/tables/leakage.tsv", sep="\t")
    table = table[table["batch_size"] == 1]
    parts = [f"{row['defense']} {row['strength']:g}: PSNR {row['psnr_db']:.0f} dB"
             for _, row in table.groupby(["defense", "strength"], sort=False).first().reset_index().iterrows()]
    return "gradient leakage of one image (DLG; higher PSNR: better reconstruction): " + "; ".join(parts)


HEADLINES: tuple[Callable[[Path, Mapping], str | None], ...] = (
    similarity_headline, perplexity_headline, newline_headline, transfer_headline, leakage_headline,
)


def success_summary(results: str | Path, config: Mapping) -> str:
    """The tables and figures under ``results`` and the run's headline numbers, with where to look next."""
    results = Path(results)
    tables = sorted(p.relative_to(results) for p in results.glob("**/tables/**/*.tsv"))
    figures = sorted(p.relative_to(results) for p in results.glob("**/figures/*.png"))
    lines = ["", f"Done. {len(tables)} tables and {len(figures)} figures under {results}/:"]
    main = [str(p) for p in tables if p.parent.name == "tables"]
    more = f" (and {len(tables) - len(main)} per-token tables)" if len(tables) > len(main) else ""
    lines += textwrap.wrap("tables: " + ", ".join(main) + more, 100, initial_indent="  ", subsequent_indent="    ")
    lines += textwrap.wrap("figures: " + ", ".join(map(str, figures)), 100, initial_indent="  ",
                           subsequent_indent="    ")
    headlines = []
    for headline in HEADLINES:
        try:
            text = headline(results, config)
        except Exception as exc:  # noqa: BLE001 (a table this run did not make; never fail a finished run)
            log.debug("no %s: %s", headline.__name__, exc)
            continue
        if text:
            headlines.append("  " + text)
    if headlines:
        lines += ["Headline numbers of this run:", *headlines]
    lines += [
        "Look further:",
        "  .venv/bin/python -m analysis show perplexity --mode full     (also: similarity, correlation, "
        "join_policy, tokens)",
        "  .venv/bin/snakemake --report report.html                      (every table and figure in one page)",
        f"  {Path(__file__).resolve().parents[1] / 'results/README.md'} describes every file.",
    ]
    return "\n".join(lines)


ERROR = re.compile(r"^Error in rule (\w+):")
LOG_LINE = re.compile(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?$")


def failure_summary(snakemake_log, workdir: str | Path = ".", tail: int = 15) -> str:
    """For each job that failed in the run logged in ``snakemake_log`` (a path, or the list of them
    that Snakemake hands to ``onerror``): its rule, its log file and that log's last ``tail`` lines."""
    workdir = Path(workdir)
    if isinstance(snakemake_log, (list, tuple)):
        if not snakemake_log:
            return "The run failed; Snakemake kept no log of it."
        snakemake_log = snakemake_log[-1]
    try:
        text = Path(snakemake_log).read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"The run failed; its log {snakemake_log} cannot be read: {exc}"
    failures, rule = [], None
    for line in text:
        match = ERROR.match(line)
        if match:
            rule = match[1]
            continue
        match = LOG_LINE.match(line)
        if rule and match:
            failures.append((rule, [p.strip() for p in match[1].split(",")]))
            rule = None
    if not failures:
        return f"The run failed before or outside a job; Snakemake's log: {snakemake_log}"
    lines = [""]
    for rule, paths in dict.fromkeys((r, tuple(p)) for r, p in failures):
        for path in paths:
            lines.append(f"Rule {rule} failed; its log {path} ends with:")
            try:
                last = (workdir / path).read_text(errors="replace").splitlines()[-tail:]
            except OSError:
                last = ["(the log was not written)"]
            lines += ["  | " + entry for entry in last]
    lines.append(f"Snakemake's own log: {snakemake_log}")
    return "\n".join(lines)
