"""Perplexity before and after adaptation, its correlation with corpus-domain distance, Figure 1.

Sign convention (the paper's): ``ppl_change = ppl_zero_shot - ppl_adapted``, positive when
adaptation helped.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.errors import PipelineError
from analysis.tables.common import ordered_by_portion, pyplot, read_json, save_figure, shade_portions, write_table
from analysis.tables.similarity import drawn_distances

# scipy is imported by the correlation functions that use it: the perplexity table does not need it.

COLUMNS = [
    "model", "mode", "train_policy", "domain", "portion", "split", "eval_policy", "tokens", "words", "bytes",
    "ppl_zero_shot", "ppl_adapted", "ppl_change", "ppl_change_percent",
    "word_ppl_zero_shot", "word_ppl_adapted", "byte_ppl_zero_shot", "byte_ppl_adapted",
    "bits_per_byte_zero_shot", "bits_per_byte_adapted", "window", "stride",
    "train_tokens", "max_train_tokens", "epoch_fraction", "vocab_size",
]
CORRELATION_COLUMNS = [
    "model", "mode", "train_policy", "corpus", "pretraining_corpus", "portion", "distance_estimator", "n", "n_fd",
    "spearman_mmd", "spearman_mmd_p", "pearson_mmd", "pearson_mmd_p",
    "spearman_fd", "spearman_fd_p", "pearson_fd", "pearson_fd_p",
]


def collect(zero_shot: Sequence[str | Path], adapted: Sequence[str | Path]) -> pd.DataFrame:
    """One row per adapted evaluation, joined with the zero-shot evaluation of its model and domain."""
    base = {}
    for path in zero_shot:
        r = read_json(path, "zero-shot evaluation")
        base[(r["model"], r["domain"])] = r
    rows = []
    for path in adapted:
        a = read_json(path, "adapted evaluation")
        z = base.get((a["model"], a["domain"]))
        if z is None:
            raise PipelineError(f"{path}: no zero-shot evaluation of {a['model']} on {a['domain']} among the inputs")
        for key in ("split", "eval_policy", "window", "stride", "tokens", "prefix_token_id"):
            if z[key] != a[key]:
                raise PipelineError(
                    f"{path}: {key} = {a[key]!r} but the zero-shot evaluation has {z[key]!r}; "
                    "rerun both with the same evaluation settings"
                )
        rows.append({
            "model": a["model"], "mode": a["stage"], "train_policy": a["train_policy"], "domain": a["domain"],
            "portion": a["portion"], "split": a["split"], "eval_policy": a["eval_policy"], "tokens": a["tokens"],
            "words": a["words"], "bytes": a["bytes"],
            "ppl_zero_shot": z["token_perplexity"], "ppl_adapted": a["token_perplexity"],
            "ppl_change": z["token_perplexity"] - a["token_perplexity"],
            "ppl_change_percent": 100 * (z["token_perplexity"] - a["token_perplexity"]) / z["token_perplexity"],
            "word_ppl_zero_shot": z["word_perplexity"], "word_ppl_adapted": a["word_perplexity"],
            "byte_ppl_zero_shot": z["byte_perplexity"], "byte_ppl_adapted": a["byte_perplexity"],
            "bits_per_byte_zero_shot": z["bits_per_byte"], "bits_per_byte_adapted": a["bits_per_byte"],
            "window": a["window"], "stride": a["stride"],
            # Evaluations written before the cap existed trained one whole epoch.
            "train_tokens": a.get("train_tokens"), "max_train_tokens": a.get("max_train_tokens"),
            "epoch_fraction": a.get("epoch_fraction", 1.0), "vocab_size": z.get("vocab_size"),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def perplexity_table(zero_shot, adapted, tsv, markdown) -> pd.DataFrame:
    frame = collect(zero_shot, adapted)
    capped = frame["max_train_tokens"].notna().any() if len(frame) else False
    training = (
        "adaptation capped at max_train_tokens per run (epoch_fraction: the share of one epoch trained): "
        "NOT the paper's one-epoch protocol" if capped else "one epoch of adaptation"
    )
    write_table(frame, tsv, markdown, title=(
        f"Perplexity before (zero-shot) and after {training}; ppl_change = zero-shot - "
        "adapted (positive: adaptation helped). Token perplexity over every token of the split, word and "
        "byte perplexity of the same total NLL."
    ))
    return frame


DISTANCE_COLUMNS = ["corpus", "domain", "portion", "mmd", "fd", "mmd_unbiased", "fd_corrected"]

#: The columns of each distance estimator (similarity.estimator): plug-in as in the paper, corrected
#: for the bias of order d / n (analysis/similarity/compare.py).
ESTIMATOR_COLUMNS = {"plugin": {"mmd": "mmd", "fd": "fd"},
                     "corrected": {"mmd": "mmd_unbiased", "fd": "fd_corrected"}}


def distances(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Plug-in and corrected MMD and FD of each (corpus, domain) distance JSON (an undefined
    corrected FD as NaN)."""
    rows = []
    for path in paths:
        record = read_json(path, "distance record", DISTANCE_COLUMNS)
        rows.append({k: math.nan if record[k] is None else record[k] for k in DISTANCE_COLUMNS})
    return pd.DataFrame(rows, columns=DISTANCE_COLUMNS)


#: Up to this many domains the Spearman p-value is exact (all n! pairings); above it scipy's
#: t approximation, which says p = 0 for a perfect rank correlation of 4 points (exact: 1/12).
EXACT_SPEARMAN_MAX_N = 8


def _rank_correlation(rx: np.ndarray, ry: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho of ranks: their Pearson correlation along ``axis`` (vectorised for scipy)."""
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    return (rx * ry).sum(axis=axis) / np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis))


def _exact_spearman_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided permutation p-value of Spearman's rho over all n! pairings of the ranks
    (``scipy.stats.permutation_test``, which enumerates them when asked for at least n! resamples)."""
    from scipy.stats import permutation_test, rankdata

    ry = rankdata(y)  # one sample permuted against the other fixed: n! pairings (both: n!^2)
    result = permutation_test((rankdata(x),), lambda rx, axis: _rank_correlation(rx, ry, axis),
                              permutation_type="pairings", vectorized=True, n_resamples=np.inf,
                              alternative="two-sided")
    return float(result.pvalue)


def _correlate(x: np.ndarray, y: np.ndarray) -> dict:
    from scipy import stats

    nan = {"spearman": math.nan, "spearman_p": math.nan, "pearson": math.nan, "pearson_p": math.nan}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return nan  # undefined: too few points, or a constant variable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spearman = stats.spearmanr(x, y)
        pearson = stats.pearsonr(x, y)
    spearman_p = _exact_spearman_p(x, y) if len(x) <= EXACT_SPEARMAN_MAX_N else float(spearman.pvalue)
    return {"spearman": float(spearman.statistic), "spearman_p": spearman_p,
            "pearson": float(pearson.statistic), "pearson_p": float(pearson.pvalue)}


def correlations(perplexity: pd.DataFrame, distance: pd.DataFrame, pretraining: Mapping[str, str]) -> pd.DataFrame:
    """Per model, mode, corpus, portion (all, wiki, s2orc) and distance estimator (plugin, corrected):
    rank and linear correlation of the perplexity change with MMD and with FD, their two-sided
    p-values, the number of domains n and of those with an FD of this estimator, n_fd (the corrected
    FD is undefined for domains below its smallest size; they are left out of its correlation)."""
    joined = perplexity.merge(distance.drop(columns="portion"), on="domain", how="inner")
    rows = []
    for (model, mode, train_policy, corpus), group in joined.groupby(["model", "mode", "train_policy", "corpus"],
                                                               sort=False):
        for portion in ["all", *sorted(group["portion"].unique())]:
            part = group if portion == "all" else group[group["portion"] == portion]
            for estimator, columns in ESTIMATOR_COLUMNS.items():
                row = {"model": model, "mode": mode, "train_policy": train_policy, "corpus": corpus,
                       "pretraining_corpus": pretraining.get(model) == corpus, "portion": portion,
                       "distance_estimator": estimator, "n": len(part),
                       "n_fd": int(part[columns["fd"]].notna().sum())}
                for measure, column in columns.items():
                    defined = part[part[column].notna()]
                    stats = _correlate(defined[column].to_numpy(float), defined["ppl_change"].to_numpy(float))
                    for method in ("spearman", "pearson"):
                        row[f"{method}_{measure}"] = stats[method]
                        row[f"{method}_{measure}_p"] = stats[f"{method}_p"]
                rows.append(row)
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def correlation_table(perplexity_tsv, distance_paths, pretraining, tsv, markdown, distances_tsv) -> pd.DataFrame:
    perplexity = pd.read_csv(perplexity_tsv, sep="\t")
    distance = distances(distance_paths)
    write_table(distance, distances_tsv)
    frame = correlations(perplexity, distance, pretraining)
    write_table(frame, tsv, markdown, title=(
        "Correlation across adaptation domains of the perplexity change (zero-shot - adapted) with the "
        "distance of the domain to each source corpus, plug-in (as in the paper) and corrected for the "
        "bias of order d / n (unbiased MMD, extrapolated FD over the n_fd domains where it is defined); "
        "two-sided p-values (Spearman: exact permutation "
        f"test up to {EXACT_SPEARMAN_MAX_N} domains, else scipy; Pearson: scipy), n domains. "
        "pretraining_corpus marks the corpus the model was pretrained on."
    ))
    return frame


def _rescale(values: np.ndarray) -> np.ndarray:
    """Min-max rescaling onto [0, 1] (0.5 for a constant)."""
    span = np.ptp(values)
    if span == 0:
        return np.full_like(values, 0.5, dtype=float)
    return (values - values.min()) / span


def perplexity_figure(perplexity: pd.DataFrame, distance: pd.DataFrame, model: str, mode: str, corpus: str,
                      path: str | Path, train_policy: str | None = None, estimator: str = "corrected") -> None:
    """The paper's Figure 1: perplexity change per domain (bars), with MMD and FD to the model's
    pretraining corpus rescaled to [0, 1] (lines, right axis; which estimates: ``similarity.
    drawn_distances``); portions shaded. When the changes span more than two orders of magnitude the
    bars use a symmetric log scale, so small changes stay visible."""
    plt = pyplot()

    selected = (perplexity["model"] == model) & (perplexity["mode"] == mode)
    if train_policy is not None:
        selected &= perplexity["train_policy"] == train_policy
    rows = perplexity[selected].set_index("domain")
    if rows.empty:
        raise PipelineError(f"no perplexity rows for model {model!r}, mode {mode!r}, training policy {train_policy!r}")
    domains = ordered_by_portion(list(rows.index), rows["portion"].to_dict())
    rows = rows.loc[domains]
    dist = distance[distance["corpus"] == corpus].set_index("domain").reindex(domains)
    drawn = drawn_distances(dist, estimator)
    x = np.arange(len(domains))
    figure, axis = plt.subplots(figsize=(max(6.5, min(0.45 * len(domains) + 3, 40.0)), 4.8))
    shade_portions(axis, domains, rows["portion"].to_dict())
    change = rows["ppl_change"].to_numpy(float)
    axis.bar(x, change, color=["tab:green" if c > 0 else "tab:red" for c in change], width=0.6,
             label="perplexity change (zero-shot - adapted)")
    axis.axhline(0, color="black", linewidth=0.8)
    magnitudes = np.abs(change[change != 0])
    scale = ""
    if len(magnitudes) and magnitudes.max() > 100 * magnitudes.min():
        axis.set_yscale("symlog", linthresh=float(magnitudes.min()))
        scale = " (symmetric log scale)"
    right = axis.twinx()
    for measure, colour, marker in (("mmd", "tab:purple", "o"), ("fd", "tab:brown", "s")):
        key, _, legend = drawn[measure]
        values = dist[key].to_numpy(float)
        if np.isfinite(values).all():
            right.plot(x, _rescale(values), color=colour, marker=marker, linewidth=1,
                       label=f"{legend} to {corpus}, rescaled to [0, 1]")
    right.set_ylim(-0.05, 1.05)
    right.set_ylabel("rescaled distance to the pretraining corpus")
    axis.set_xticks(x)
    axis.set_xticklabels(domains, rotation=60, ha="right", fontsize=7)
    axis.set_ylabel(f"perplexity change{scale}; positive: better")
    trained = f", trained on '{train_policy}' text" if train_policy else ""
    axis.set_title(f"{model}, mode {mode}{trained}: perplexity change after one epoch of adaptation", fontsize=10)
    handles = [h for a in (axis, right) for h in a.get_legend_handles_labels()[0]]
    labels = [lab for a in (axis, right) for lab in a.get_legend_handles_labels()[1]]
    axis.legend(handles, labels, fontsize=7, loc="upper left")
    save_figure(figure, path)
