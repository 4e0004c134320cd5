"""The similarity table (every corpus x domain pair) and one figure per corpus, like the paper's Figure 2."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.errors import PipelineError
from analysis.tables.common import ordered_by_portion, pyplot, read_json, save_figure, shade_portions, write_table

COLUMNS = [
    "corpus", "domain", "portion", "n_corpus", "n_domain", "n_over_d_corpus", "n_over_d_domain",
    "mmd", "mmd_ci_low", "mmd_ci_high", "mmd_unbiased", "mmd_unbiased_ci_low", "mmd_unbiased_ci_high",
    "fd", "fd_ci_low", "fd_ci_high", "fd_corrected", "fd_corrected_ci_low", "fd_corrected_ci_high",
    "note", "embedding_model",
]

#: What the figures draw for each estimator choice (similarity.estimator).
ESTIMATORS = ("corrected", "plugin")


def _interval(value) -> tuple[float, float]:
    return (math.nan, math.nan) if value is None else (float(value[0]), float(value[1]))


def _note(record: dict) -> str:
    """Sizes at or below the dimension (singular covariance) and why FD was not corrected, if so."""
    pieces = []
    for side in ("corpus", "domain"):
        n = record[f"n_{side}"]
        if n <= record["dimension"]:
            pieces.append(f"{side} n = {n} <= d = {record['dimension']}: singular covariance, plug-in FD biased")
    if record["fd_corrected"] is None:
        pieces.append(f"no corrected FD: {record['fd_corrected_reason']}")
    return "; ".join(pieces)


def collect(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per distance JSON, in the given order; undefined corrected FD as NaN."""
    rows = []
    for path in paths:
        r = read_json(path, "distance record")
        row = {key: r[key] for key in ("corpus", "domain", "portion", "n_corpus", "n_domain")}
        row.update(n_over_d_corpus=r["n_over_d"]["corpus"], n_over_d_domain=r["n_over_d"]["domain"])
        for key in ("mmd", "mmd_unbiased", "fd", "fd_corrected"):
            row[key] = math.nan if r[key] is None else float(r[key])
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = _interval(r[f"{key}_ci"])
        row.update(note=_note(r), embedding_model=r["embedding_model"])
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def similarity_table(paths: Sequence[str | Path], tsv: str | Path, markdown: str | Path) -> pd.DataFrame:
    frame = collect(paths)
    confidence = read_json(paths[0], "distance record")["intervals"]["confidence"] if paths else 0.95
    write_table(
        frame, tsv, markdown,
        title=(
            "Similarity of source corpora and domains: linear MMD and Fréchet distance, plug-in (as in the "
            "paper; biased upwards by terms of order d / n) and corrected (mmd_unbiased: the U-statistic, "
            "negative when the sets are closer than their sampling noise; fd_corrected: extrapolated to "
            f"infinitely many texts, empty below its smallest size); {confidence:.0%} intervals: estimate "
            "-/+ z x standard deviation over random halves of the sets"
        ),
    )
    return frame


def drawn_distances(frame: pd.DataFrame, estimator: str) -> dict[str, tuple[str, str, str]]:
    """For MMD and FD, the column the figures draw, its axis label and its legend entry.

    ``corrected``: the unbiased MMD; the corrected FD when it is defined for every row of ``frame``,
    else the plug-in FD (the legend says why). ``plugin``: the plug-in values.
    """
    if estimator not in ESTIMATORS:
        raise PipelineError(f"unknown similarity.estimator {estimator!r}; expected one of {ESTIMATORS}")
    plugin_fd = ("fd", "FD (plug-in)", "FD (plug-in)")
    if estimator == "plugin":
        return {"mmd": ("mmd", "MMD (plug-in)", "MMD (plug-in)"), "fd": plugin_fd}
    if frame["fd_corrected"].notna().all():
        fd = ("fd_corrected", "FD (corrected)", "FD (corrected)")
    else:
        fd = ("fd", "FD (plug-in)", "FD (plug-in: too few texts to correct it for some domain)")
    return {"mmd": ("mmd_unbiased", "MMD (unbiased)", "MMD (unbiased)"), "fd": fd}


def similarity_figure(frame: pd.DataFrame, corpus: str, path: str | Path, estimator: str = "corrected") -> None:
    """MMD (left axis) and FD (right axis) per domain with intervals, Wikipedia / S2ORC shaded; which
    estimates are drawn: ``drawn_distances``."""
    plt = pyplot()

    rows = frame[frame["corpus"] == corpus].set_index("domain")
    domains = ordered_by_portion(list(rows.index), rows["portion"].to_dict())
    rows = rows.loc[domains]
    drawn = drawn_distances(rows, estimator)
    x = range(len(domains))
    width = max(6.0, min(0.35 * len(domains), 40.0))
    figure, left = plt.subplots(figsize=(width, 4.5))
    right = left.twinx()
    shade_portions(left, domains, rows["portion"].to_dict(), alpha=0.12)
    for axis, measure, colour, marker, offset in [
        (left, "mmd", "tab:green", "o", -0.12), (right, "fd", "tab:red", "s", 0.12)
    ]:
        key, _, legend = drawn[measure]
        positions = [i + offset for i in x]
        axis.vlines(positions, rows[f"{key}_ci_low"], rows[f"{key}_ci_high"], color=colour, linewidth=2, alpha=0.6)
        axis.plot(positions, rows[key], color=colour, marker=marker, linestyle="-", linewidth=1, markersize=4,
                  label=f"{legend} (bar: interval)")
    left.set_ylabel(f"{drawn['mmd'][1]}, linear kernel", color="tab:green")
    right.set_ylabel(drawn["fd"][1], color="tab:red")
    left.set_xticks(list(x))
    if len(domains) <= 60:
        left.set_xticklabels(domains, rotation=75, ha="right", fontsize=7)
    else:
        left.set_xticklabels([str(i + 1) for i in x], rotation=90, fontsize=5)
        left.set_xlabel("domain ID (order of results/tables/similarity.tsv within each portion)")
    model = rows["embedding_model"].iloc[0]
    left.set_title(f"Distance of M2D2 domains to the source corpus '{corpus}' ({model} embeddings)")
    handles = [h for axis in (left, right) for h in axis.get_legend_handles_labels()[0]]
    labels = [lab for axis in (left, right) for lab in axis.get_legend_handles_labels()[1]]
    left.legend(handles, labels, loc="upper left", fontsize=8)
    save_figure(figure, path)
