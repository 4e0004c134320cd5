"""Tables and figures of the vision edge-training compression stages: pruning, quantization, distillation.

Inputs are the three JSON files ``analysis.edge.stages`` writes (``pruning_stage``,
``quantization_stage``, ``distillation_stage``), all about the same float32 source net (the
reference, the distillation's teacher). Sizes follow ``analysis.edge.compression``: stored weights
only in ``weight_kib`` (non-zeros at 32 bits for pruning, sparse index overhead excluded; bits per
weight plus float32 codebooks for k-means; plus a float32 scale and zero point per output channel
for linear quantization); ``size_kib`` adds the biases and batch norm at float32. ``bits_per_weight``
is the nominal width (32 unless quantized); ``compression_ratio`` = the reference's size / the size.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.errors import PipelineError
from analysis.tables.common import blank_cells, label_points, pyplot, read_json, save_figure, write_table

# matplotlib arrives through common.pyplot, when a figure is drawn (see tables/common.py).

FAMILIES = {  # family -> colour, marker (the reference: a star)
    "reference": ("black", "*"), "fine-grained pruning": ("tab:blue", "o"), "channel pruning": ("tab:orange", "s"),
    "k-means quantization": ("tab:green", "D"), "linear quantization": ("tab:red", "^"),
    "distillation": ("tab:purple", "P"),
}
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError)


def _row(family: str, setting: str, sizes: dict, reference: dict, accuracy: float, before: float = math.nan,
         bits: int = 32, macs: int | None = None) -> dict:
    return {"family": family, "setting": setting, "size_kib": float(sizes["size_kib"]),
            "weight_kib": float(sizes["weight_kib"]), "compression_ratio": reference["size_kib"] / sizes["size_kib"],
            "sparsity": float(sizes["sparsity"]), "bits_per_weight": int(bits), "macs": macs,
            "test_accuracy_before_finetune": float(before), "test_accuracy": float(accuracy),
            "accuracy_change": float(accuracy) - reference["test_accuracy"]}


def _pruning_rows(blob: dict) -> list[dict]:
    ref = blob["reference"]
    rows = [_row("reference", "float32 source net", ref, ref, ref["test_accuracy"], macs=int(ref["macs"]))]
    drop = blob.get("max_accuracy_drop")  # not every stage version records it
    fine = sorted(blob["fine_grained"], key=lambda r: (r["method"] != "global", r["target_sparsity"] or 0.0))
    for r in fine:
        setting = f"global {r['target_sparsity']:g}" if r["method"] == "global" else \
            (f"sensitivity (max drop {drop:g})" if drop is not None else "sensitivity (per-layer scan)")
        rows.append(_row("fine-grained pruning", setting, r, ref, r["test_accuracy_finetuned"],
                         r["test_accuracy_pruned"]))
    for r in sorted(blob["channels"], key=lambda r: r["channel_ratio"]):
        rows.append(_row("channel pruning", f"{r['channel_ratio']:.0%} hidden channels removed", r, ref,
                         r["test_accuracy_finetuned"], r["test_accuracy_pruned"], macs=int(r["macs"])))
    return rows


def _bits(bits: int) -> str:
    return f"{bits} bit" + ("s" if bits != 1 else "")


def _quantization_rows(blob: dict) -> list[dict]:
    ref = blob["reference"]
    rows = [_row("k-means quantization", _bits(r["bits"]), r, ref, r["test_accuracy_finetuned"],
                 r["test_accuracy_quantized"], bits=r["bits"]) for r in sorted(blob["kmeans"], key=lambda r: r["bits"])]
    return rows + [_row("linear quantization", _bits(r["bits"]), r, ref, r["test_accuracy"], bits=r["bits"])
                   for r in sorted(blob["linear"], key=lambda r: r["bits"])]


def _distillation_rows(blob: dict) -> list[dict]:
    teacher, size = blob["teacher"], blob["student"]
    students = sorted(blob["students"], key=lambda r: (r["temperature"] is not None, r["temperature"] or 0.0))
    return [_row("distillation", "student, labels only" if r["temperature"] is None else
                 f"student T={r['temperature']:g}", size, teacher, r["test_accuracy"]) for r in students]


def _rows(builder, path, what: str, blob: dict) -> list[dict]:
    try:
        return builder(blob)
    except MALFORMED as error:
        raise PipelineError(f"{what} {path} is malformed: {type(error).__name__} {error}") from None


def sensitivity_table(blob: dict, path) -> pd.DataFrame:
    """The scan in the net's order, with the sparsity the scan chose for each layer."""
    try:
        frame = pd.DataFrame(blob["sensitivity"], columns=["layer", "sparsity", "validation_accuracy",
                                                           "accuracy_drop"]).astype({"sparsity": float})
        frame["chosen_sparsity"] = frame["layer"].map({k: float(v) for k, v in blob["sensitivity_sparsities"].items()})
    except MALFORMED as error:
        raise PipelineError(f"pruning result {path}: malformed sensitivity scan: {type(error).__name__} {error}") \
            from None
    if frame.empty or frame.isna().any().any():
        raise PipelineError(f"pruning result {path}: the sensitivity scan is empty, incomplete or lacks a layer's "
                            "chosen sparsity")
    return frame


def compression_tables(pruning: str | Path, quantization: str | Path, distillation: str | Path,
                       tables_dir: str | Path, figures_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Write compression and sensitivity tables (TSV + Markdown) and two figures; return the two tables."""
    p = read_json(pruning, "pruning result",
              ("reference", "sensitivity", "sensitivity_sparsities", "fine_grained", "channels"))
    q = read_json(quantization, "quantization result", ("reference", "kmeans", "linear"))
    d = read_json(distillation, "distillation result", ("teacher", "student", "students", "student_width"))
    rows = _rows(_pruning_rows, pruning, "pruning result", p) + \
        _rows(_quantization_rows, quantization, "quantization result", q) + \
        _rows(_distillation_rows, distillation, "distillation result", d)
    sizes = [p["reference"]["size_kib"], q["reference"]["size_kib"], d["teacher"]["size_kib"]]
    if not all(math.isclose(s, sizes[0]) for s in sizes):
        raise PipelineError(f"{pruning}, {quantization} and {distillation} compress different source nets "
                            f"(reference sizes {', '.join(f'{s:g}' for s in sizes)} KiB)")
    frame = pd.DataFrame(rows).astype({"macs": "Int64"})
    scan = sensitivity_table(p, pruning)
    tables, figures = Path(tables_dir), Path(figures_dir)
    base = float((scan["validation_accuracy"] + scan["accuracy_drop"]).iloc[0])
    drop = p.get("max_accuracy_drop")
    alpha = next((r.get("alpha") for r in d["students"] if r.get("temperature") is not None), None)
    write_table(blank_cells(frame), tables / "compression.tsv", tables / "compression.md", title=(
        f"Compression of the source net (test accuracy {p['reference']['test_accuracy']:.3f}, "
        f"{p['reference']['size_kib']:.1f} KiB): size_kib = stored weights (weight_kib: non-zeros at 32 bits for "
        "pruning, bits per weight + float32 codebooks for k-means, + a float32 scale and zero point per channel for "
        "linear) + biases and batch norm at float32; compression_ratio = reference size / size; test accuracy after "
        "fine-tuning where there is one (before: test_accuracy_before_finetune); linear quantization is not "
        "fine-tuned; accuracy_change vs the reference (the teacher for distillation); macs where recorded; "
        f"distillation: student of width {d['student_width']}"
        + (f", alpha {alpha:g}" if alpha is not None else "") + f", {d.get('epochs', '?')} epochs from scratch"))
    write_table(scan, tables / "sensitivity.tsv", tables / "sensitivity.md", title=(
        "Sensitivity scan: one layer at a time pruned (L1, unstructured) to each sparsity, validation accuracy "
        f"(unpruned {base:.3f}); chosen_sparsity: the largest scanned sparsity within the allowed drop"
        + (f" ({drop:g})" if drop is not None else "") + ", 0 where none is"))
    compression_figure(frame, figures / "compression.png")
    sensitivity_figure(scan, base, drop, figures / "sensitivity.png")
    return {"compression": frame, "sensitivity": scan}


def _points(axis, part: pd.DataFrame, x: str, family: str, label: str, line: bool = False) -> None:
    """Fine-tuned values filled, before fine-tuning hollow (same colour), joined by a thin line where both exist."""
    colour, marker = FAMILIES[family]
    style = dict(color=colour, marker=marker, markersize=7, linewidth=1.2 if line else 0)
    axis.plot(part[x], part["test_accuracy"], label=label, zorder=3, **style)
    before = part.dropna(subset=["test_accuracy_before_finetune"])
    if len(before):
        axis.plot(before[x], before["test_accuracy_before_finetune"], markerfacecolor="white", linestyle="--",
                  label=f"{label}, before fine-tuning", zorder=2.5, **{**style, "linewidth": 0.8 if line else 0})
        if not line:
            for r in before.itertuples():
                axis.plot([getattr(r, x)] * 2, [r.test_accuracy_before_finetune, r.test_accuracy], color=colour,
                          linewidth=0.6, alpha=0.5, zorder=2)


SHORT = (("global ", ""), ("sensitivity", "sens."), ("% hidden channels removed", "% ch."), (" bits", "b"),
         (" bit", "b"), ("student, labels only", "labels"), ("student ", ""))


def _short(setting: str) -> str:
    for old, new in (*SHORT, ("float32 source net", "float32")):
        setting = setting.replace(old, new)
    return setting.split(" (")[0]


def _reference(axis, frame: pd.DataFrame, x: float) -> None:
    ref = frame[frame["family"] == "reference"].iloc[0]
    axis.plot([x], [ref["test_accuracy"]], "k*", markersize=14, label="reference (float32)", zorder=4)


def compression_figure(frame: pd.DataFrame, path: str | Path) -> None:
    from matplotlib import ticker

    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    left, middle, right = axes
    for family in FAMILIES:
        part = frame[frame["family"] == family]
        if family != "reference" and len(part):
            _points(left, part, "size_kib", family, family)
    _reference(left, frame, frame.loc[frame["family"] == "reference", "size_kib"].iloc[0])
    left.set_xscale("log")
    left.margins(x=0.1)
    for which in ("major", "minor"):
        getattr(left.xaxis, f"set_{which}_formatter")(ticker.LogFormatter(labelOnlyBase=False))
    left.set_xlabel("stored size (KiB, log scale)")
    left.set_title("accuracy against size (hollow: before fine-tuning)", fontsize=10)
    quantized = frame[frame["family"].isin(["k-means quantization", "linear quantization"])]
    for family in ("k-means quantization", "linear quantization"):
        part = quantized[quantized["family"] == family]
        if len(part):
            _points(middle, part, "bits_per_weight", family, family, line=True)
    _reference(middle, frame, 32)
    middle.set_xscale("log", base=2)
    ticks = sorted({*quantized["bits_per_weight"], 32})
    middle.set_xticks(ticks, [str(t) for t in ticks])
    middle.xaxis.set_minor_formatter(ticker.NullFormatter())
    middle.set_xlabel("bits per weight (log scale)")
    middle.set_title("quantization (linear: no fine-tuning)", fontsize=10)
    fine = frame[frame["family"] == "fine-grained pruning"]
    glob, sens = fine[fine["setting"].str.startswith("global")], fine[~fine["setting"].str.startswith("global")]
    if len(glob):
        _points(right, glob, "sparsity", "fine-grained pruning", "global magnitude pruning", line=True)
    for r in sens.itertuples():
        right.plot([r.sparsity], [r.test_accuracy], "D", color="tab:cyan", markersize=8, zorder=4,
                   label="per-layer sensitivity")
        right.plot([r.sparsity], [r.test_accuracy_before_finetune], "D", color="tab:cyan", markersize=8,
                   markerfacecolor="white", zorder=4, label="per-layer sensitivity, before fine-tuning")
    _reference(right, frame, 0.0)
    right.set_xlim(-0.03, 1.0)
    right.set_xlabel("sparsity (share of weights zero)")
    right.set_title("fine-grained pruning", fontsize=10)
    for axis in axes:
        axis.set_ylim(0, 1.05)
        axis.set_ylabel("source-task test accuracy")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    label_points(left, [(r.size_kib, r.test_accuracy, _short(r.setting), FAMILIES[r.family][0])  # after the limits
                   for r in frame.itertuples()], step=0.04)
    figure.suptitle("Compressing the source net: pruning, quantization and distillation", fontsize=11)
    figure.tight_layout()
    save_figure(figure, path)


def sensitivity_figure(scan: pd.DataFrame, base: float, drop: float | None, path: str | Path) -> None:
    """Small multiples, one panel a layer in the net's order: validation accuracy against sparsity."""
    plt = pyplot()
    layers = list(dict.fromkeys(scan["layer"]))
    columns = min(6, len(layers))
    rows = -(-len(layers) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 1.9 * rows + 0.6), sharex=True, sharey=True,
                                squeeze=False)
    low = float(scan["validation_accuracy"].min())
    for axis, layer in zip(axes.flat, layers):
        part = scan[scan["layer"] == layer].sort_values("sparsity")
        chosen = float(part["chosen_sparsity"].iloc[0])
        axis.axhline(base, color="grey", linestyle=":", linewidth=1)
        if drop is not None:
            axis.axhspan(base - drop, base, color="tab:green", alpha=0.15)
        axis.plot(part["sparsity"], part["validation_accuracy"], marker="o", markersize=4, color="tab:blue")
        axis.plot([0, part["sparsity"].iloc[0]], [base, part["validation_accuracy"].iloc[0]], color="tab:blue",
                  linestyle=":", linewidth=0.8)  # from the unpruned layer
        at = part[part["sparsity"] == chosen]
        axis.plot([chosen], [at["validation_accuracy"].iloc[0] if len(at) else base], marker="o", markersize=9,
                  markerfacecolor="none", markeredgecolor="tab:red", markeredgewidth=1.5, linestyle="none")
        axis.set_title(f"{layer}: {chosen:g}", fontsize=8, color="tab:red" if chosen == 0 else "black")
        axis.grid(alpha=0.3)
        axis.tick_params(labelsize=7)
    for index in range(len(layers), rows * columns):
        axes.flat[index].set_visible(False)
        axes.flat[index - columns].tick_params(labelbottom=True)  # the x ticks of the panel above the gap
    axes[0][0].set_xlim(-0.05, 1.0)
    axes[0][0].set_ylim(min(0.0, low - 0.05), 1.05)
    figure.supxlabel("sparsity of the one pruned layer", fontsize=9)
    figure.supylabel("validation accuracy", fontsize=9)
    band = f"; green: within the allowed drop {drop:g}" if drop is not None else ""
    figure.suptitle(f"Per-layer sensitivity scan (dotted: unpruned {base:.3f}{band}); red circle and title: the "
                    "chosen sparsity (red title: 0, the layer is left dense)", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)
