"""Tables and figures of the vision edge-training privacy stages: federated averaging and gradient leakage.

Inputs are the JSON files ``analysis.edge.stages`` writes: one ``federated_averaging`` result per
partition scheme, and one leakage result per defense with the ``.npz`` of its reconstructions beside
it (``<snapshot_key>_{initial,middle,final,truth}``, arrays (B, C, H, W) in [0, 1]). Attack metrics
are means over the ``attack`` repetitions of a setting; an attack counts as defended when the mean
PSNR of its final reconstructions is below ``DEFENDED_PSNR_DB`` (no longer recognisable).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from analysis.edge.names import DEFENSES, METHODS, PARTITIONS
from analysis.errors import PipelineError
from analysis.tables.common import blank_cells, pyplot, read_json, save_figure, write_table

# matplotlib arrives through common.pyplot, when a figure is drawn (see tables/common.py).

METHOD_NAMES = {"dlg": "DLG", "idlg": "iDLG"}
DEFENDED_PSNR_DB = 20.0
STAGES = ("initial", "middle", "final", "truth")
METRICS = {"mse": "mse", "psnr_db": "psnr", "ssim": "ssim", "label_accuracy": "label_accuracy",
           "seconds": "seconds", "evaluations": "evaluations", "model_test_accuracy": "model_test_accuracy"}
KEYS = ("defense", "strength", "method", "batch_size", "attack", "snapshot_key", *METRICS.values())


def _rank(order: Sequence[str], name: str) -> int:
    return order.index(name) if name in order else len(order)


def _partition_name(blob: dict) -> str:
    if blob["partition"] == "iid":
        return "IID"
    return f"non-IID (Dirichlet alpha = {blob['settings']['alpha']:g})" if blob["partition"] == "dirichlet" \
        else blob["partition"]


def federated_table(federated: Sequence[str | Path]) -> tuple[pd.DataFrame, str, list[tuple[str, dict]]]:
    """One row per (partition, round), the title's settings text and the (label, blob) of each run."""
    loaded, paths = [], {}
    for path in federated:
        blob = read_json(path, "federated result", ("partition", "clients", "settings", "rounds"))
        if blob["partition"] in paths:
            raise PipelineError(f"{paths[blob['partition']]} and {path} are both results of {blob['partition']}")
        paths[blob["partition"]] = path
        loaded.append((_rank(PARTITIONS, blob["partition"]), blob["partition"], path, blob))
    if not loaded:
        raise PipelineError("edge privacy tables: no federated results were given")
    rows, notes, runs = [], [], []
    for _, name, path, blob in sorted(loaded, key=lambda item: item[:2]):
        try:
            s, previous = blob["settings"], None
            for record in sorted(blob["rounds"], key=lambda r: int(r["round"])):
                rows.append({"partition": name, "clients": int(blob["clients"]), "round": int(record["round"]),
                             "test_accuracy": float(record["test_accuracy"]), "test_loss": float(record["test_loss"]),
                             "train_loss": float(record.get("train_loss", math.nan)),
                             "seconds": float(record["seconds"]),
                             "round_seconds": math.nan if previous is None else record["seconds"] - previous})
                previous = float(record["seconds"])
            sampled = "all" if s["fraction"] >= 1 else f"a share {s['fraction']:g}"
            setting = (f"{s['clients']} clients ({sampled} sampled a round), {s['local_steps']} local SGD "
                       f"steps of batch {s['batch_size']} at lr {s['lr']:g}, {s['rounds']} rounds, Dirichlet "
                       f"alpha {s['alpha']:g}")
            notes.append((name, setting, f"{name} {blob['round_seconds_median']:.2f} s"))
            runs.append((_partition_name(blob), blob))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PipelineError(f"federated result {path} is malformed: {type(error).__name__} {error}") from None
    settings = sorted({setting for _, setting, _ in notes})
    text = settings[0] if len(settings) == 1 else "; ".join(f"{name}: {setting}" for name, setting, _ in notes)
    text += "; median round time " + ", ".join(median for _, _, median in notes)
    return pd.DataFrame(rows), text, runs


def leakage_table(leakage: Sequence[str | Path], snapshots: Sequence[str | Path]) -> tuple[pd.DataFrame, dict]:
    """One row per (defense, strength, method, batch size), averaged over attacks; defense -> (json, npz, blob)."""
    if len(leakage) != len(snapshots):
        raise PipelineError(f"edge privacy tables: {len(leakage)} leakage results but {len(snapshots)} snapshot files")
    rows, runs = [], {}
    for path, npz in zip(leakage, snapshots):
        blob = read_json(path, "leakage result", ("defense", "attacks", "settings"))
        if not Path(npz).is_file():
            raise PipelineError(f"leakage snapshots {npz} (beside {path}) do not exist")
        if blob["defense"] in runs:
            raise PipelineError(f"{runs[blob['defense']][0]} and {path} are both results of defense {blob['defense']}")
        runs[blob["defense"]] = (path, npz, blob)
        if not isinstance(blob["attacks"], list) or not blob["attacks"]:
            raise PipelineError(f"leakage result {path}: attacks is not a non-empty list")
        for attack in blob["attacks"]:
            missing = [key for key in KEYS if key not in attack] if isinstance(attack, dict) else ["an object"]
            if missing:
                raise PipelineError(f"leakage result {path}: an attack lacks {', '.join(missing)}")
            if attack["defense"] != blob["defense"]:
                raise PipelineError(f"leakage result {path} of {blob['defense']} holds one of {attack['defense']}")
            rows.append({key: attack[key] for key in KEYS})
    if not rows:
        raise PipelineError("edge privacy tables: no leakage results were given")
    keys = ["defense", "strength", "method", "batch_size"]
    try:
        frame = pd.DataFrame(rows).astype({"strength": float, "batch_size": int})
        means = {column: (field, "mean") for column, field in METRICS.items()}
        table = frame.groupby(keys, sort=False).agg(n_attacks=("attack", "size"), **means).reset_index()
    except (TypeError, ValueError) as error:
        raise PipelineError(f"leakage results {', '.join(map(str, leakage))}: a strength, batch size or metric is "
                            f"not a number: {error}") from None
    table["defended"] = table["psnr_db"] < DEFENDED_PSNR_DB
    order = table.assign(_d=table["defense"].map(lambda d: _rank(DEFENSES, d)),
                         _m=table["method"].map(lambda m: _rank(METHODS, m)))
    table = table.loc[order.sort_values(["_d", "defense", "strength", "_m", "method", "batch_size"]).index]
    return table.reset_index(drop=True), runs


def privacy_tables(federated: Sequence[str | Path], leakage: Sequence[str | Path], snapshots: Sequence[str | Path],
                   tables_dir: str | Path, figures_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Write federated and leakage tables (TSV + Markdown) and three figures; return the two tables."""
    fed, settings, runs = federated_table(federated)
    leak, leak_runs = leakage_table(leakage, snapshots)
    tables, figures = Path(tables_dir), Path(figures_dir)
    write_table(blank_cells(fed), tables / "federated.tsv", tables / "federated.md", title=(
        f"Federated averaging on Flower: test accuracy of the global model per round ({settings}). Round 0 is "
        "the initial model (no train loss); train_loss: clients' mean local loss weighted by their examples; "
        "seconds: elapsed since the simulation started (round 1 includes Ray's start-up); round_seconds: this round"))
    attacks = leak_runs[next(iter(leak_runs))][2]["settings"]
    write_table(leak, tables / "leakage.tsv", tables / "leakage.md", title=(
        f"Deep leakage from gradients: DLG and iDLG ({attacks['iterations']} L-BFGS steps) against client-side "
        "defenses, means over n_attacks batches; strength: noise scale, or share of gradient entries pruned; "
        f"defended: mean PSNR below {DEFENDED_PSNR_DB:g} dB (not recognisable, whatever the cause: a batch can "
        "defeat the attack without a defense); model_test_accuracy: a LeNet trained through the defense"))
    federated_figure(fed, runs, figures / "federated.png")
    reconstruction_figure(leak_runs, figures / "leakage_reconstructions.png")
    defense_figure(leak, figures / "leakage_defenses.png")
    return {"federated": fed, "leakage": leak}


def federated_figure(frame: pd.DataFrame, runs: list[tuple[str, dict]], path: str | Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for (label, blob), (_, part) in zip(runs, frame.groupby("partition", sort=False)):
        axis.plot(part["round"], part["test_accuracy"], marker="o", markersize=4,
                  label=f"{label}: final {part['test_accuracy'].iloc[-1]:.3f}")
    classes = len(runs[0][1].get("client_label_histogram", [[]] * 1)[0])
    if classes:
        axis.axhline(1 / classes, color="grey", linestyle=":", linewidth=1, label=f"chance (1/{classes})")
    s = runs[0][1]["settings"]
    axis.set_xlabel("communication round (0: the initial model)")
    axis.set_ylabel("test accuracy of the global model")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="center right")
    axis.set_title(f"FedAvg on Flower: {s['clients']} clients, {s['local_steps']} local SGD steps a round",
                   fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def _mosaic(images: np.ndarray, columns: int, width: int) -> np.ndarray:
    """(B, C, H, W) as a grid of ``columns`` tiles a row, 1-pixel white gaps, centred in ``width`` tiles."""
    b, c, h, w = images.shape
    canvas = np.ones((-(-b // columns) * (h + 1) - 1, width * (w + 1) - 1, c))
    left = (width - min(b, columns)) // 2
    for i, image in enumerate(np.clip(images, 0, 1)):
        r, k = divmod(i, columns)
        x = (left + k) * (w + 1)
        canvas[r * (h + 1):r * (h + 1) + h, x:x + w] = image.transpose(1, 2, 0)
    return canvas


def reconstruction_figure(runs: dict, path: str | Path) -> None:
    """DLG's figure: per (method, batch size) of the no-defense run's first attack, the reconstruction at the
    start, the middle and the end of the attack beside the true images (a batch as rows of about twice as
    many columns: 8 as 2 x 4), all at one scale."""
    plt = pyplot()
    defense = "none" if "none" in runs else next(iter(runs))
    source, npz, blob = runs[defense]
    weakest, first = min(a["strength"] for a in blob["attacks"]), {}
    for attack in blob["attacks"]:
        if attack["strength"] == weakest:
            first.setdefault((_rank(METHODS, attack["method"]), attack["method"], attack["batch_size"]), attack)
    attacks = [attack for _, attack in sorted(first.items())]
    columns = [math.ceil(a["batch_size"] / max(1, round(math.sqrt(a["batch_size"] / 2)))) for a in attacks]
    width = max(columns)
    try:
        with np.load(npz) as arrays:
            stacks = [[_mosaic(arrays[f"{a['snapshot_key']}_{stage}"], c, width) for stage in STAGES]
                      for a, c in zip(attacks, columns)]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise PipelineError(f"leakage snapshots {npz} (of {source}) are unreadable or lack an attack's images: "
                            f"{type(error).__name__} {error}") from None
    heights = [stack[0].shape[0] for stack in stacks]
    inches = min(0.6, 9.0 / (4 * width)) / (stacks[0][0].shape[1] / width)  # per pixel: a tile at most 0.6 in
    figure, axes = plt.subplots(len(stacks), 1, squeeze=False, gridspec_kw={"height_ratios": heights},
                                figsize=(4.3 * stacks[0][0].shape[1] * inches + 2,
                                         sum(heights) * inches + 0.45 * len(stacks) + 0.6))
    middle = blob["settings"].get("iterations", 0) // 2
    labels = ["initial (random)", f"middle (step {middle})" if middle else "middle", "final", "ground truth"]
    for axis, attack, stack in zip(axes[:, 0], attacks, stacks):
        gap = np.ones((stack[0].shape[0], stack[0].shape[1] // (4 * width) + 4, stack[0].shape[2]))
        strip = np.concatenate([stack[0], gap, stack[1], gap, stack[2], gap, stack[3]], axis=1)
        axis.imshow(strip[..., 0] if strip.shape[2] == 1 else strip, cmap="gray", vmin=0, vmax=1,
                    interpolation="nearest")  # greyscale (C = 1) or RGB (C = 3)
        step = stack[0].shape[1] + gap.shape[1]
        axis.set_xticks([i * step + stack[0].shape[1] / 2 for i in range(4)], labels, fontsize=7)
        axis.xaxis.tick_top()
        axis.tick_params(length=0)
        axis.set_yticks([])
        axis.spines[:].set_visible(False)
        axis.set_ylabel(f"{METHOD_NAMES.get(attack['method'], attack['method'])}, batch {attack['batch_size']}\n"
                        f"final PSNR {attack['psnr']:.1f} dB\nlabels {attack['label_accuracy']:.0%} right",
                        rotation=0, ha="right", va="center", fontsize=8)
    note = "no defense" if defense == "none" else f"{defense} at its weakest strength"
    figure.suptitle(f"Deep leakage from gradients, {note}: reconstructions during the attack (first batch)",
                    fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


DEFENSE_AXES = {  # title, x label, x scale
    "gaussian": ("Gaussian noise on the gradient", "noise standard deviation (log scale)", "log"),
    "laplacian": ("Laplacian noise on the gradient", "Laplace scale b (log scale)", "log"),
    "prune": ("gradient pruning (smallest magnitudes dropped)", "share of gradient entries pruned (logit scale)",
              "logit"),
}


def defense_figure(table: pd.DataFrame, path: str | Path) -> None:
    """Per defense: the attacks' PSNR (left) and the defended net's test accuracy (right) against strength."""
    plt = pyplot()
    defenses = [d for d in table["defense"].unique() if d != "none"] or ["none"]
    figure, axes = plt.subplots(1, len(defenses), figsize=(5 * len(defenses), 4.2), squeeze=False)
    styles = dict(zip(METHODS, (("tab:blue", "o", 8), ("tab:orange", "x", 6))))  # iDLG's points inside DLG's
    peak, twins = float(table["psnr_db"].replace(math.inf, math.nan).max()), []
    for axis, defense in zip(axes[0], defenses):
        part = table[(table["defense"] == defense) & (table["strength"] > 0)]  # 0 has no place on a log axis
        batch = int(part["batch_size"].min()) if len(part) else 1
        part, none = part[part["batch_size"] == batch], table[(table["defense"] == "none")
                                                               & (table["batch_size"] == batch)]
        right = axis.twinx()
        twins.append(right)
        for method, rows in part.groupby("method", sort=False):
            colour, marker, size = styles.get(method, ("tab:purple", "^", 6))
            axis.plot(rows["strength"], rows["psnr_db"], marker=marker, markersize=size, markerfacecolor="none",
                      color=colour, label=f"{METHOD_NAMES.get(method, method)}: attack PSNR")
            for reference in none[none["method"] == method]["psnr_db"]:
                axis.axhline(reference, color=colour, linestyle="--", linewidth=0.8,
                             label=f"{METHOD_NAMES.get(method, method)}: attack PSNR, no defense")
        accuracy = part.drop_duplicates("strength")
        right.plot(accuracy["strength"], accuracy["model_test_accuracy"], marker="s", color="tab:green",
                   label="test accuracy, trained through the defense")
        for reference in none["model_test_accuracy"].unique():
            right.axhline(reference, color="tab:green", linestyle=":", linewidth=1, label="test accuracy, no defense")
        axis.axhspan(0, DEFENDED_PSNR_DB, color="grey", alpha=0.12, label=f"defended (PSNR < {DEFENDED_PSNR_DB:g} dB)")
        title, xlabel, scale = DEFENSE_AXES.get(defense, (defense, "defense strength", "linear"))
        if len(part):
            from matplotlib import ticker

            axis.set_xscale(scale)  # the strengths as plain numbers, not 10^-2 or 1 - 10^-1
            strengths = sorted(part["strength"].unique())
            axis.set_xticks(strengths, [f"{x:g}" for x in strengths])
            axis.xaxis.set_minor_formatter(ticker.NullFormatter())
            axis.margins(x=0.08)
        axis.set_xlabel(xlabel, fontsize=8)
        axis.set_ylabel("attack PSNR of the final reconstruction (dB)", fontsize=8)
        # PSNR up to 3/4 of the height: the no-defense lines stay clear of the accuracies (near 1) on the right
        axis.set_ylim(0, max(40.0, peak if math.isfinite(peak) else 80.0) / 0.75)
        right.set_ylim(0, 1.0)
        right.set_ylabel("test accuracy of a net trained through the defense", fontsize=8)
        axis.set_title(f"{title}, batch {batch}", fontsize=9)
        axis.grid(alpha=0.3)
    handles = [h for a in (axes[0][0], twins[0]) for h in a.get_legend_handles_labels()[0]]  # the same in each
    figure.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower center", ncol=4, frameon=False)
    figure.suptitle("Gradient leakage against client-side defenses: attack success vs model accuracy "
                    "(means over the attacks)", fontsize=10)
    figure.tight_layout(rect=(0, 0.1, 1, 1))  # room for the shared legend below the panels
    save_figure(figure, path)
