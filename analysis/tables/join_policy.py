"""The join-policy ablation: does the change on newline tokens come from how the training text is joined?

For each (model, domain, training join policy) of ``adaptation.join_ablation``: the perplexity change
of the whole evaluation split, and on the token-level chunks the change split into whitespace
tokens (newline tokens among them) and all other tokens. Changes follow the paper's sign
(zero-shot - adapted, positive: better). The NLL changes of whitespace and other tokens add up to
the total; perplexities of token groups do not add and are given for reading.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.tables.common import ordered_by_portion, pyplot, read_json, save_figure, shade_portions, write_table
from analysis.tables.tokens import group_totals, load_chunks, perplexity_of, splits_of, token_changes

COLUMNS = [
    "model", "domain", "portion", "train_policy", "eval_policy", "mode",
    "ppl_zero_shot", "ppl_adapted", "ppl_change", "ppl_change_percent",
    "chunk_split", "chunk_tokens", "newline_tokens", "whitespace_tokens",
    "ppl_newline_zero_shot", "ppl_newline_adapted", "ppl_newline_change",
    "ppl_whitespace_zero_shot", "ppl_whitespace_adapted", "ppl_whitespace_change",
    "ppl_other_zero_shot", "ppl_other_adapted", "ppl_other_change",
    "nll_change_total", "nll_change_whitespace", "nll_change_other", "newline_share", "whitespace_share",
]


def split_change(frame: pd.DataFrame) -> dict:
    """The token-level change of one domain split into newline, whitespace and other tokens."""
    whitespace = frame["kind"].isin(["newline", "whitespace"])
    row = {"chunk_tokens": int(frame["count"].sum())}
    totals = {}
    for name, mask in (("newline", frame["kind"] == "newline"), ("whitespace", whitespace), ("other", ~whitespace)):
        count, zero, adapted = group_totals(frame, mask)
        totals[name] = zero - adapted
        zero_ppl, adapted_ppl = perplexity_of(zero, count), perplexity_of(adapted, count)
        row.update({f"ppl_{name}_zero_shot": zero_ppl, f"ppl_{name}_adapted": adapted_ppl,
                    f"ppl_{name}_change": zero_ppl - adapted_ppl})
        if name != "other":
            row[f"{name}_tokens"] = count
    total = totals["whitespace"] + totals["other"]
    row.update({
        "nll_change_total": total, "nll_change_whitespace": totals["whitespace"], "nll_change_other": totals["other"],
        "newline_share": totals["newline"] / total if total else math.nan,
        "whitespace_share": totals["whitespace"] / total if total else math.nan,
    })
    return row


def collect(runs: Sequence[Mapping], mode: str, decoders: Mapping[str, Callable[[int], str]],
            split: str = "test") -> pd.DataFrame:
    """One row per (model, training policy, domain) run of the ablation; each run names the
    evaluation files (``<stem>.json`` and ``<stem>.npz``) of its zero-shot and adapted model."""
    rows = []
    for run in runs:
        model, train_policy, domain = run["model"], run["train_policy"], run["domain"]
        zero_path, adapted_path = run["zero_shot"], run["adapted"]
        zero = read_json(f"{zero_path}.json", "zero-shot evaluation record")
        adapted = read_json(f"{adapted_path}.json", "adapted evaluation record")
        row = {
            "model": model, "domain": domain, "portion": adapted["portion"], "train_policy": train_policy,
            "eval_policy": adapted["eval_policy"], "mode": mode,
            "ppl_zero_shot": zero["token_perplexity"], "ppl_adapted": adapted["token_perplexity"],
            "ppl_change": zero["token_perplexity"] - adapted["token_perplexity"],
            "ppl_change_percent": 100 * (zero["token_perplexity"] - adapted["token_perplexity"])
            / zero["token_perplexity"],
        }
        available = splits_of(f"{zero_path}.npz")
        chosen = split if split in available else (available[0] if available else None)
        if chosen is not None:
            zero_ids, zero_nll = load_chunks(f"{zero_path}.npz", chosen)
            adapted_ids, adapted_nll = load_chunks(f"{adapted_path}.npz", chosen)
            frame = token_changes(zero_ids, zero_nll, adapted_ids, adapted_nll, decoders[model])
            row.update({"chunk_split": chosen, **split_change(frame)})
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def join_policy_table(runs, mode, decoders, tsv, markdown, figures: Sequence[str | Path],
                      models: Sequence[str], split: str = "test") -> pd.DataFrame:
    frame = collect(runs, mode, decoders, split)
    write_table(frame, tsv, markdown, title=(
        f"Join-policy ablation (mode {mode}): perplexity change (zero-shot - adapted) of the evaluation split, "
        "and on the token-level chunks split into newline / whitespace tokens and all others; the NLL changes "
        "(nats) of whitespace and other tokens add up to the total; newline_share is the newline tokens' "
        "share of the total NLL change"
    ))
    for model, path in zip(models, figures):
        join_policy_figure(frame[frame["model"] == model], model, path)
    return frame


def join_policy_figure(frame: pd.DataFrame, model: str, path: str | Path) -> None:
    """Per domain and training policy: relative perplexity change overall (top) and on newline
    tokens (bottom); portions shaded."""
    plt = pyplot()

    portions = frame.drop_duplicates("domain").set_index("domain")["portion"].to_dict()
    domains = ordered_by_portion(list(portions), portions)
    policies = list(dict.fromkeys(frame["train_policy"]))
    x = np.arange(len(domains))
    width = 0.8 / max(len(policies), 1)
    figure, axes = plt.subplots(2, 1, figsize=(max(6.5, 1.1 * len(domains) + 3), 7), sharex=True)
    panels = [("ppl_change_percent", "perplexity change, whole split (%)"),
              ("newline_change_percent", "perplexity change on newline tokens (%)")]
    frame = frame.assign(newline_change_percent=100 * frame["ppl_newline_change"] / frame["ppl_newline_zero_shot"])
    for axis, (column, label) in zip(axes, panels):
        shade_portions(axis, domains, portions)
        for k, train_policy in enumerate(policies):
            values = frame[frame["train_policy"] == train_policy].set_index("domain").reindex(domains)[column]
            axis.bar(x - 0.4 + width * (k + 0.5), values, width=width, label=f"trained on '{train_policy}' text")
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_ylabel(label + "\npositive: better", fontsize=8)
    axes[0].legend(fontsize=7, ncol=2)
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels(domains, rotation=60, ha="right", fontsize=7)
    eval_policy = frame["eval_policy"].iloc[0] if len(frame) else "?"
    axes[0].set_title(f"{model}: training join policy vs perplexity change (evaluated on '{eval_policy}' text)",
                      fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
