"""Token-level analysis: where the perplexity change comes from, per predicted token id.

Inputs are the npz files of rules zero_shot and evaluate: the same sampled chunks scored by the base
and the adapted model (``analysis.lm.evaluate``). Per token id: how often it is predicted, its mean
NLL before and after, and its share of the total NLL change. Changes follow the paper's sign:
``nll_change = zero-shot - adapted``, positive when adaptation helped; shares are of the total
change, so they sum to 1 over all ids (a degraded token has a negative share when the total improved).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.errors import PipelineError
from analysis.tables.common import pyplot, save_figure, write_table

KINDS = ("newline", "whitespace", "other")
TABLE_COLUMNS = ["split", "token_id", "token", "kind", "count", "nll_zero_shot", "nll_adapted",
                 "nll_change_mean", "nll_change_sum", "change_share"]
SUMMARY_COLUMNS = [
    "model", "mode", "domain", "portion", "split", "chunks", "tokens", "ppl_zero_shot", "ppl_adapted",
    "nll_change_sum", "newline_tokens", "ppl_newline_zero_shot", "ppl_newline_adapted",
    "newline_share", "whitespace_share", "other_share", "top_improved", "top_degraded",
]


def token_kind(text: str) -> str:
    """``newline`` for whitespace-only tokens with a line break, ``whitespace`` for other
    whitespace-only tokens, ``other`` for the rest."""
    if text.strip():
        return "other"
    return "newline" if "\n" in text or "\r" in text else "whitespace"


def readable(text: str) -> str:
    """A token string on one line: line breaks and tabs escaped, spaces made visible at the edges."""
    escaped = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if escaped != escaped.strip(" "):
        escaped = f"'{escaped}'"
    return escaped


def load_chunks(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        if f"{split}_ids" not in data:
            raise PipelineError(f"{path}: no token-level chunks for split {split!r}")
        return data[f"{split}_ids"], data[f"{split}_nll"].astype(np.float64)


def splits_of(path: str | Path) -> list[str]:
    with np.load(path) as data:
        return [name[: -len("_ids")] for name in data.files if name.endswith("_ids")]


def token_changes(zero_ids: np.ndarray, zero_nll: np.ndarray, adapted_ids: np.ndarray, adapted_nll: np.ndarray,
                  decode: Callable[[int], str]) -> pd.DataFrame:
    """One row per predicted token id (columns ``TABLE_COLUMNS`` without ``split``)."""
    if not np.array_equal(zero_ids, adapted_ids):
        raise PipelineError("the zero-shot and adapted chunks hold different tokens: rerun both evaluations "
                            "with the same tokens file, seed and evaluation.token_level settings")
    ids = zero_ids.ravel()
    change = (zero_nll - adapted_nll).ravel()
    unique, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    zero_sum = np.bincount(inverse, weights=zero_nll.ravel(), minlength=len(unique))
    adapted_sum = np.bincount(inverse, weights=adapted_nll.ravel(), minlength=len(unique))
    change_sum = zero_sum - adapted_sum
    total = change.sum()
    strings = [decode(int(i)) for i in unique]
    frame = pd.DataFrame({
        "token_id": unique.astype(np.int64),
        "token": [readable(s) for s in strings],
        "kind": [token_kind(s) for s in strings],
        "count": counts,
        "nll_zero_shot": zero_sum / counts,
        "nll_adapted": adapted_sum / counts,
        "nll_change_mean": change_sum / counts,
        "nll_change_sum": change_sum,
        "change_share": change_sum / total if total != 0 else np.nan,
    })
    return frame.sort_values("nll_change_sum", key=np.abs, ascending=False, kind="stable").reset_index(drop=True)


def group_totals(frame: pd.DataFrame, mask: pd.Series | None = None) -> tuple[int, float, float]:
    """Tokens, summed zero-shot NLL and summed adapted NLL of per-token rows (those in ``mask``)."""
    part = frame if mask is None else frame[mask]
    count = int(part["count"].sum())
    zero = float((part["nll_zero_shot"] * part["count"]).sum())
    return count, zero, float((part["nll_adapted"] * part["count"]).sum())


def perplexity_of(total_nll: float, count: int) -> float:
    return math.exp(total_nll / count) if count else math.nan


def summarise(frame: pd.DataFrame, top_k: int) -> dict:
    """Totals of one domain and split from its per-token rows."""
    n, zero, adapted = group_totals(frame)
    total = zero - adapted
    shares = {kind: frame.loc[frame["kind"] == kind, "nll_change_sum"].sum() / total if total else math.nan
              for kind in KINDS}
    n_newline, newline_zero, newline_adapted = group_totals(frame, frame["kind"] == "newline")
    by_change = frame.sort_values("nll_change_sum", kind="stable")
    return {
        "tokens": n,
        "ppl_zero_shot": perplexity_of(zero, n), "ppl_adapted": perplexity_of(adapted, n), "nll_change_sum": total,
        "newline_tokens": n_newline,
        "ppl_newline_zero_shot": perplexity_of(newline_zero, n_newline),
        "ppl_newline_adapted": perplexity_of(newline_adapted, n_newline),
        "newline_share": shares["newline"],
        "whitespace_share": shares["newline"] + shares["whitespace"],
        "other_share": shares["other"],
        "top_improved": " ".join(by_change[by_change["nll_change_sum"] > 0]["token"].iloc[::-1][:top_k]),
        "top_degraded": " ".join(by_change[by_change["nll_change_sum"] < 0]["token"][:top_k]),
    }


def token_tables(*, model: str, mode: str, domains: Sequence[str], portions: Mapping[str, str],
                 zero_shot: Sequence[str | Path], adapted: Sequence[str | Path], decode: Callable[[int], str],
                 tables: Sequence[str | Path], summary_tsv: str | Path, summary_md: str | Path,
                 figure: str | Path, top_k: int) -> pd.DataFrame:
    """Per-domain token tables, the summary across domains and the token figure of one model and mode."""
    summary, per_domain = [], {}
    for domain, zero_path, adapted_path, table in zip(domains, zero_shot, adapted, tables):
        parts = []
        for split in splits_of(zero_path):
            zero_ids, zero_nll = load_chunks(zero_path, split)
            adapted_ids, adapted_nll = load_chunks(adapted_path, split)
            if zero_ids.size == 0:
                continue
            try:
                frame = token_changes(zero_ids, zero_nll, adapted_ids, adapted_nll, decode)
            except PipelineError as exc:
                raise PipelineError(f"{adapted_path} vs {zero_path}, split {split}: {exc}") from None
            summary.append({"model": model, "mode": mode, "domain": domain, "portion": portions[domain],
                            "split": split, "chunks": len(zero_ids), **summarise(frame, top_k)})
            parts.append(frame.assign(split=split))
        rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TABLE_COLUMNS)
        write_table(rows[TABLE_COLUMNS], table)
        per_domain[domain] = rows
    frame = pd.DataFrame(summary, columns=SUMMARY_COLUMNS)
    write_table(frame, summary_tsv, summary_md, title=(
        f"Token-level change of {model} ({mode}) on sampled chunks: perplexity before and after, and the "
        "share of the NLL change (zero-shot - adapted) from newline, whitespace (newline included) and "
        f"other tokens; top {top_k} improved and degraded tokens by summed change"
    ))
    token_figure(frame, per_domain, f"{model}, mode {mode}", figure)
    return frame


def token_figure(summary: pd.DataFrame, per_domain: Mapping[str, pd.DataFrame], title: str, path: str | Path,
                 top: int = 10) -> None:
    """Left: per domain, the share of the NLL change from newline, other whitespace and other tokens
    (shares sum to 1; a negative share is a part that got worse while the total improved).
    Right: the tokens with the largest summed change across domains (test split where present)."""
    plt = pyplot()

    split = "test" if (summary["split"] == "test").any() else (summary["split"].iloc[0] if len(summary) else "test")
    rows = summary[summary["split"] == split].reset_index(drop=True)
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(rows))
    shares = {"newline": rows["newline_share"].to_numpy(float),
              "whitespace": (rows["whitespace_share"] - rows["newline_share"]).to_numpy(float),
              "other": rows["other_share"].to_numpy(float)}
    bottom_pos, bottom_neg = np.zeros(len(rows)), np.zeros(len(rows))
    colours = {"newline": "tab:red", "whitespace": "tab:orange", "other": "tab:gray"}
    labels = {"newline": "newline tokens", "whitespace": "other whitespace tokens", "other": "other tokens"}
    for kind in KINDS:
        values = np.nan_to_num(shares[kind])
        left.bar(x, values, bottom=np.where(values >= 0, bottom_pos, bottom_neg), color=colours[kind],
                 label=labels[kind])
        bottom_pos += np.clip(values, 0, None)
        bottom_neg += np.clip(values, None, 0)
    left.axhline(0, color="black", linewidth=0.8)
    left.set_xticks(x)
    left.set_xticklabels([f"{d} ({p})" for d, p in zip(rows["domain"], rows["portion"])], rotation=60, ha="right",
                         fontsize=7)
    left.set_ylabel("share of the total NLL change (sums to 1)")
    left.set_title(f"Where the change comes from ({split} chunks)", fontsize=9)
    left.legend(fontsize=7)

    parts = [frame[frame["split"] == split] for frame in per_domain.values()]
    parts = [p for p in parts if len(p)]
    if parts:
        merged = pd.concat(parts).groupby(["token_id", "token"], as_index=False)["nll_change_sum"].sum()
        merged = merged.sort_values("nll_change_sum")
        chosen = pd.concat([merged[merged["nll_change_sum"] < 0].head(top),
                            merged[merged["nll_change_sum"] > 0].tail(top)]).sort_values("nll_change_sum")
        right.barh(np.arange(len(chosen)), chosen["nll_change_sum"],
                   color=["tab:green" if v > 0 else "tab:red" for v in chosen["nll_change_sum"]])
        right.set_yticks(np.arange(len(chosen)))
        right.set_yticklabels(chosen["token"], fontsize=8)
        right.axvline(0, color="black", linewidth=0.8)
    right.set_xlabel("summed NLL change across domains (nats; positive: better)")
    right.set_title(f"Top {top} improved (green) and degraded (red) tokens", fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
