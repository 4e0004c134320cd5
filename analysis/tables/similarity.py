"""The similarity table (every corpus x domain pair) and one figure per corpus, like the paper's Figure 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.tables.common import ordered_by_portion, save_figure, shade_portions, write_table

COLUMNS = [
    "corpus", "domain", "portion", "n_corpus", "n_domain",
    "mmd", "mmd_ci_low", "mmd_ci_high", "fd", "fd_ci_low", "fd_ci_high", "embedding_model",
]


def collect(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per distance JSON, in the given order."""
    rows = []
    for path in paths:
        r = json.loads(Path(path).read_text(encoding="utf-8"))
        rows.append(
            {
                "corpus": r["corpus"], "domain": r["domain"], "portion": r["portion"],
                "n_corpus": r["n_corpus"], "n_domain": r["n_domain"],
                "mmd": r["mmd"], "mmd_ci_low": r["mmd_ci"][0], "mmd_ci_high": r["mmd_ci"][1],
                "fd": r["fd"], "fd_ci_low": r["fd_ci"][0], "fd_ci_high": r["fd_ci"][1],
                "embedding_model": r["embedding_model"],
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def similarity_table(paths: Sequence[str | Path], tsv: str | Path, markdown: str | Path) -> pd.DataFrame:
    frame = collect(paths)
    first = json.loads(Path(paths[0]).read_text())["bootstrap"] if paths else {"confidence": 0.95, "interval": "basic"}
    write_table(
        frame, tsv, markdown,
        title=(
            "Similarity of source corpora and domains (linear MMD and Fréchet distance; "
            f"{first['confidence']:.0%} {first['interval']} bootstrap intervals)"
        ),
    )
    return frame


def similarity_figure(frame: pd.DataFrame, corpus: str, path: str | Path) -> None:
    """MMD (left axis) and FD (right axis) per domain with intervals, Wikipedia / S2ORC shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = frame[frame["corpus"] == corpus].set_index("domain")
    domains = ordered_by_portion(list(rows.index), rows["portion"].to_dict())
    rows = rows.loc[domains]
    x = range(len(domains))
    width = max(6.0, min(0.35 * len(domains), 40.0))
    figure, left = plt.subplots(figsize=(width, 4.5))
    right = left.twinx()
    shade_portions(left, domains, rows["portion"].to_dict(), alpha=0.12)
    for axis, key, colour, marker, offset in [
        (left, "mmd", "tab:green", "o", -0.12), (right, "fd", "tab:red", "s", 0.12)
    ]:
        # Intervals drawn as bars of their own: a bias-corrected interval need not contain the estimate.
        positions = [i + offset for i in x]
        axis.vlines(positions, rows[f"{key}_ci_low"], rows[f"{key}_ci_high"], color=colour, linewidth=2, alpha=0.6)
        axis.plot(positions, rows[key], color=colour, marker=marker, linestyle="-", linewidth=1, markersize=4,
                  label=f"{key.upper()} (bar: bootstrap interval)")
    left.set_ylabel("MMD (linear kernel)", color="tab:green")
    right.set_ylabel("Fréchet distance", color="tab:red")
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
