"""Training curves: the losses that rule adapt records along its epoch (``curves.tsv``), drawn for
one run (``curves.png`` beside it) and for every domain of one model and mode (rule curves_figure)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.tables.common import pyplot, save_figure

#: The curves' columns and their legend labels.
CURVE_LABELS = {"valid_loss": "validation", "test_loss": "test", "train_first_loss": "train, seen first"}


def curve_figure(curves: list[dict], title: str, path: str | Path) -> None:
    """One run's losses along its epoch (rule adapt's ``curves.png``)."""
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(6, 3.6))
    fractions = [row["epoch_fraction"] for row in curves]
    for key, label in CURVE_LABELS.items():
        if key in curves[0]:
            axis.plot(fractions, [row[key] for row in curves], marker="o", label=label)
    axis.set_xlabel("fraction of the epoch")
    axis.set_ylabel("loss (nats per token)")
    axis.set_title(title, fontsize=9)
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path)


def curves_figure(curve_paths: Sequence[str | Path], domains: Sequence[str], title: str, path: str | Path) -> None:
    """Validation and test loss along the epoch of one model and mode, one panel per domain (rule
    curves_figure)."""
    plt = pyplot()

    columns = min(4, len(domains))
    rows = math.ceil(len(domains) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False, sharex=True)
    for axis, domain, curve_path in zip(axes.flat, domains, curve_paths):
        curves = pd.read_csv(curve_path, sep="\t")
        for key, label in CURVE_LABELS.items():
            if key in curves:
                axis.plot(curves["epoch_fraction"], curves[key], marker="o", markersize=3, label=label)
        axis.set_title(domain, fontsize=7)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(domains):]:
        axis.axis("off")
    for axis in axes[:, 0]:
        axis.set_ylabel("loss (nats/token)", fontsize=7)
    for axis in axes[-1, :]:
        axis.set_xlabel("fraction of the epoch", fontsize=7)
    axes.flat[0].legend(fontsize=6)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
