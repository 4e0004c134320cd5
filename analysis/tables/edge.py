"""Tables and figures of the vision edge-training stages: TinyTL transfer modes and sparse back-propagation.

Inputs are the JSON files ``analysis.edge.stages`` writes: the pretraining metrics, one file per
transfer mode, the contribution analysis and one file per sparse budget. Memory is in KiB (1024
bytes, float32 throughout); ``saved`` counts activations saved for backward by TinyTL's rules
(analytic), ``measured`` what autograd actually saved in one step with the frugal layers (the
loss's few bytes included in the totals), ``stock_measured`` the same with stock PyTorch layers.
``extra`` = gradients + optimizer state + saved activations (what training needs beyond
inference); ``training`` = parameters + gradients + optimizer state + the forward activation peak.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.edge.names import MODES
from analysis.errors import PipelineError
from analysis.tables.common import blank_cells, label_points, pyplot, read_json, save_figure, write_table

# matplotlib arrives through common.pyplot, when a figure is drawn (see tables/common.py).

KIB = 1024
MEMORY_COLUMNS = {  # table column -> memory_report field (bytes)
    "parameter_kib": "parameter_bytes", "gradient_kib": "gradient_bytes", "optimizer_kib": "optimizer_bytes",
    "saved_activation_kib": "analytic_saved_bytes", "measured_saved_activation_kib": "measured_saved_bytes",
    "stock_measured_saved_activation_kib": "stock_measured_saved_bytes", "peak_activation_kib": "analytic_peak_bytes",
    "extra_kib": "extra_bytes", "measured_extra_kib": "measured_extra_bytes", "training_kib": "training_bytes",
}
LAYER_COLUMNS = {"input_kib": "input_bytes", "output_kib": "output_bytes", "saved_kib": "saved_bytes",
                 "live_kib": "live_bytes", "measured_kib": "measured_bytes",
                 "stock_measured_kib": "stock_measured_bytes"}


def scheme_text(scheme: dict) -> str:
    """``bias x3; 5.expand@0.25, 6.expand@0.5``: the biases of the last k blocks, then partial weights."""
    weights = scheme.get("weight_update") or {}
    pairs = sorted(weights.items() if isinstance(weights, dict) else weights)  # a dict, or (layer, ratio) pairs
    parts = ([f"bias x{scheme['n_bias_update']}"] if scheme["n_bias_update"] else []) + \
        ([", ".join(f"{layer}@{ratio:g}" for layer, ratio in pairs)] if pairs else [])
    return "; ".join(parts) or "classifier only"


def _method_rows(name: str, kind: str, blob: dict, metric: str) -> tuple[list[dict], list[dict]]:
    """Summary rows (one per batch size) and per-layer rows of one mode or sparse scheme."""
    sparse = kind == "sparse"
    summary, layers = [], []
    for batch, report in sorted(blob["memory"].items(), key=lambda item: int(item[0])):
        head = {"method": name, "kind": kind, "batch_size": int(batch)}
        summary.append({
            **head, "test_accuracy": blob["test"]["accuracy"], "test_loss": blob["test"]["loss"],
            "trained_parameters": int(report.get("trained_parameters", blob["trained_parameters"])),
            **{column: report[field] / KIB for column, field in MEMORY_COLUMNS.items()},
            "budget_kib": blob["budget_kib"] if sparse else math.nan,
            "scheme": scheme_text(blob["scheme"]) if sparse else None,
            f"estimated_gain_{metric}": blob["estimated_gain"] if sparse else math.nan,  # the search's summed gains
            "search_memory_kib": blob["search"]["memory_bytes"] / KIB if sparse else math.nan,
        })
        for row in report["layers"]:
            layers.append({**head, "layer": row["layer"], "type": row["type"],
                           **{column: row[field] / KIB for column, field in LAYER_COLUMNS.items()},
                           "match": row["saved_bytes"] == row["measured_bytes"]})  # exact, in bytes
    return summary, layers


def _load_methods(transfers, sparse, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    loaded = []  # (sort key, name, kind, path, blob)
    for path in transfers:
        blob = read_json(path, "transfer result", ("mode", "test", "trained_parameters", "memory"))
        mode = blob["mode"]
        rank = MODES.index(mode) if mode in MODES else len(MODES)
        loaded.append(((0, rank, 0.0, mode), mode, "mode", path, blob))
    for path in sparse:
        blob = read_json(path, "sparse result", ("budget_kib", "scheme", "estimated_gain", "search", "test",
                                             "trained_parameters", "memory"))
        budget = blob["budget_kib"]
        loaded.append(((1, 0, float(budget), ""), f"sparse@{budget:g}KiB", "sparse", path, blob))
    summary, layers, paths = [], [], {}
    for _, name, kind, path, blob in sorted(loaded, key=lambda item: item[0]):
        if name in paths:  # two rows per batch size would make the ratios against full ambiguous
            raise PipelineError(f"{paths[name]} and {path} are both results of {name}")
        paths[name] = path
        try:
            rows, layer_rows = _method_rows(name, kind, blob, metric)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PipelineError(f"{kind} result {path} is malformed: {type(error).__name__} {error}") from None
        summary += rows
        layers += layer_rows
    if not summary:
        raise PipelineError("edge tables: no transfer or sparse results were given")
    frame = pd.DataFrame(summary)
    # Ratios against full fine-tuning at the same batch size (NaN where full was not run).
    full = frame[frame["method"] == "full"].set_index("batch_size")
    at = frame.columns.get_loc("training_kib") + 1  # beside the memory columns, before the sparse-only ones
    for i, column in enumerate(("extra", "training")):
        frame.insert(at + i, f"{column}_ratio_full",
                     frame["batch_size"].map(full[f"{column}_kib"]) / frame[f"{column}_kib"])
    return frame, pd.DataFrame(layers)


def contribution_table(blob: dict) -> pd.DataFrame:
    """One row per unit: the biases of the last k blocks (gain vs the frozen net), or one layer's weight
    at one ratio (gain vs every bias trained); the gain column is named by its metric."""
    gain = f"gain_{blob['gain']}"
    rows = [{"unit": "bias", "k": int(k), "layer": None, "ratio": math.nan, gain: value}
            for k, value in blob["bias"].items()]
    rows += [{"unit": "weight", "k": None, "layer": w["layer"], "ratio": float(w["ratio"]), gain: w["gain"]}
             for w in blob["weight"]]
    frame = pd.DataFrame(rows, columns=["unit", "k", "layer", "ratio", gain]).astype({"k": "Int64"})
    # Layers in the net's order ("10.expand" after "9.project"), not alphabetically.
    layers = blob.get("space", {}).get("layers") or list(dict.fromkeys(w["layer"] for w in blob["weight"]))
    rank = {layer: i for i, layer in enumerate(layers)}
    order = frame.assign(_unit=frame["unit"] != "bias", _layer=frame["layer"].map(rank))
    return frame.loc[order.sort_values(["_unit", "k", "_layer", "ratio"]).index].reset_index(drop=True)


def edge_tables(pretrain: str | Path, transfers: Sequence[str | Path], contributions: str | Path,
                sparse: Sequence[str | Path], tables_dir: str | Path,
                figures_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Write transfer, memory_layers and contributions tables (TSV + Markdown) and three figures."""
    source = read_json(pretrain, "pretraining metrics", ("test", "parameters"))
    contrib_blob = read_json(contributions, "contribution analysis", ("gain", "baselines", "bias", "weight"))
    try:
        contrib = contribution_table(contrib_blob)
        baselines = ", ".join(f"{name} {value['accuracy']:.3f}" for name, value in contrib_blob["baselines"].items())
        source_note = (f"source net: {source['parameters']} parameters, "
                       f"source-task test accuracy {source['test']['accuracy']:.3f}")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PipelineError(f"{contributions} or {pretrain} is malformed: {type(error).__name__} {error}") from None
    transfer, layers = _load_methods(transfers, sparse, contrib_blob["gain"])
    tables, figures = Path(tables_dir), Path(figures_dir)
    write_table(blank_cells(transfer), tables / "transfer.tsv", tables / "transfer.md", title=(
        f"Target-task transfer: TinyTL modes and sparse schemes found under a budget of extra memory ({source_note}). "
        "Memory in KiB per batch size; extra = gradients + optimizer + saved activations (analytic); "
        "training = parameters + gradients + optimizer + activation peak; *_ratio_full = full's value / this row's; "
        "search_memory_kib: the extra memory the search estimated (at its own batch size)"))
    write_table(layers, tables / "memory_layers.tsv", tables / "memory_layers.md", title=(
        "Activations saved for backward per layer (KiB): analytic by TinyTL's rules, measured with the frugal "
        "layers and with stock PyTorch layers; match: analytic == measured, byte for byte"))
    write_table(blank_cells(contrib), tables / "contributions.tsv", tables / "contributions.md", title=(
        f"Contribution analysis on the validation split ({contrib_blob['gain']} gain): biases of the last k blocks "
        "against the frozen net, one layer's weight at a ratio against all biases trained; baseline accuracies "
        f"{baselines}"))
    transfer_figure(transfer, source_note, figures / "transfer_memory.png")
    contribution_figure(contrib, figures / "contributions.png")
    sparse_figure(transfer, figures / "sparse.png")
    return {"transfer": transfer, "memory_layers": layers, "contributions": contrib}


STYLES = {"mode": ("tab:blue", "o", "TinyTL transfer mode"), "sparse": ("tab:red", "^", "sparse back-propagation")}


def _scatter(axis, frame: pd.DataFrame, x: str) -> None:
    """Points labelled by method, on a log x axis with plain numbers."""
    from matplotlib import ticker

    for kind, (colour, marker, label) in STYLES.items():
        part = frame[frame["kind"] == kind]
        axis.scatter(part[x], part["test_accuracy"], color=colour, marker=marker, s=40, label=label, zorder=3)
    axis.set_xscale("log")
    axis.margins(x=0.12, y=0.1)
    for which in ("major", "minor"):  # "400", not "4 x 10^2"; minor ticks labelled where the range is short
        getattr(axis.xaxis, f"set_{which}_formatter")(ticker.LogFormatter(labelOnlyBase=False))
    axis.grid(alpha=0.3, which="both")
    label_points(axis, [(getattr(r, x), r.test_accuracy, f"{r.budget_kib:g} KiB budget" if r.kind == "sparse" else r.method,
                    STYLES[r.kind][0]) for r in frame.itertuples()])


def transfer_figure(frame: pd.DataFrame, note: str, path: str | Path) -> None:
    """TinyTL's figure: target test accuracy against training memory, one panel per batch size."""
    plt = pyplot()
    batches = sorted(frame["batch_size"].unique())
    figure, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.5), sharey=True, squeeze=False)
    for axis, batch in zip(axes[0], batches):
        _scatter(axis, frame[frame["batch_size"] == batch], "training_kib")
        axis.set_title(f"batch size {batch}", fontsize=9)
        axis.set_xlabel("training memory (KiB, log scale): parameters + gradients\n+ optimizer + activation peak",
                        fontsize=8)
    axes[0][0].set_ylabel("target test accuracy")
    axes[0][0].legend(fontsize=7, loc="lower right")
    figure.suptitle(f"Transfer to the target task: accuracy vs training memory\n({note})", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def contribution_figure(frame: pd.DataFrame, path: str | Path) -> None:
    """Bias gain against k (left); weight gain per layer and ratio as a heat map (right)."""
    plt = pyplot()
    gain = frame.columns[-1]
    metric = gain.removeprefix("gain_")
    bias = frame[frame["unit"] == "bias"]
    weight = frame[frame["unit"] == "weight"].pivot(index="layer", columns="ratio", values=gain)
    weight = weight.reindex(list(dict.fromkeys(frame.loc[frame["unit"] == "weight", "layer"])))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, max(4.5, 0.28 * len(weight) + 1.5)),
                                         gridspec_kw={"width_ratios": [1, 1.1]})
    left.plot(bias["k"].astype(int), bias[gain], marker="o", color="tab:blue")
    left.axhline(0, color="black", linewidth=0.8)
    left.set_xlabel("k: biases of the last k blocks (and the head) trained")
    left.set_ylabel(f"validation {metric} gain vs the frozen net")
    left.set_title("bias units", fontsize=9)
    left.grid(alpha=0.3)
    if len(weight):
        limit = float(weight.abs().max().max()) or 1.0  # a symmetric scale: white is no gain
        image = right.imshow(weight.to_numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        right.set_xticks(range(len(weight.columns)), [f"{r:g}" for r in weight.columns])
        right.set_yticks(range(len(weight)), weight.index, fontsize=7)
        for (i, j), value in pd.DataFrame(weight.to_numpy()).stack().items():
            right.text(j, i, f"{value:+.3f}", ha="center", va="center", fontsize=6,
                       color="white" if abs(value) > 0.6 * limit else "black")  # legible on dark cells
        figure.colorbar(image, ax=right, label=f"validation {metric} gain vs all biases trained")
    right.set_xlabel("update ratio (fraction of the layer's weight trained)")
    right.set_title("weight units: one layer at one ratio", fontsize=9)
    figure.suptitle(f"Contribution analysis ({metric} gain, positive: better)", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def sparse_figure(frame: pd.DataFrame, path: str | Path) -> None:
    """Accuracy against extra memory for full, last, bias and each sparse budget (batch 8, else the largest)."""
    plt = pyplot()
    batch = 8 if (frame["batch_size"] == 8).any() else int(frame["batch_size"].max())
    part = frame[(frame["batch_size"] == batch)
                 & (frame["method"].isin(["full", "last", "bias"]) | (frame["kind"] == "sparse"))]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    _scatter(axis, part, "extra_kib")
    for row in part[part["kind"] == "sparse"].itertuples():
        # A budget bounds the search's estimate at the search's batch size: draw it only where that is this one.
        if math.isclose(row.search_memory_kib, row.extra_kib):
            axis.axvline(row.budget_kib, color="tab:red", linestyle=":", linewidth=0.8, zorder=1)
    axis.set_xlabel("extra training memory (KiB, log scale): gradients + optimizer + saved activations")
    axis.set_ylabel("target test accuracy")
    axis.set_title(f"Sparse back-propagation vs TinyTL modes, batch size {batch} (dotted: budgets)", fontsize=10)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    save_figure(figure, path)
