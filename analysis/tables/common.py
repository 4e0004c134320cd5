"""Writing tables: TSV with full precision and a Markdown rendering of the same rows, atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.corpora.catalogue import PORTIONS, WIKI
from analysis.errors import PipelineError
from analysis.io import atomic_path, write_text


def read_json(path: str | Path, what: str, keys: Sequence[str] = ()) -> dict:
    """A JSON object from ``path``; a PipelineError naming ``what`` and the file if it is missing,
    unreadable, not an object or lacks one of ``keys``."""
    path = Path(path)
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise PipelineError(f"{what} {path} is not readable JSON: {error}") from None
    missing = [key for key in keys if key not in blob] if isinstance(blob, dict) else ["a JSON object"]
    if missing:
        raise PipelineError(f"{what} {path} lacks {', '.join(missing)}")
    return blob


def _format(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"
    return str(value).replace("|", "\\|")  # a literal pipe would end the cell


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table; floats with 4 significant digits."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + " |"
    rows = ["| " + " | ".join(_format(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def write_table(frame: pd.DataFrame, tsv: str | Path, markdown: str | Path | None = None, title: str | None = None) -> None:
    """Write ``frame`` as TSV (full precision) and optionally as Markdown, each atomically."""
    with atomic_path(tsv) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.10g")
    if markdown is not None:
        text = (f"# {title}\n\n" if title else "") + to_markdown(frame)
        write_text(markdown, text)


def save_figure(figure, path: str | Path, dpi: int = 150) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)


def ordered_by_portion(domains: Sequence[str], portions: dict[str, str]) -> list[str]:
    """Wikipedia domains first, then S2ORC, each in the given order (the paper's figure order)."""
    return [d for d in domains if portions[d] == WIKI] + [d for d in domains if portions[d] != WIKI]


PORTION_COLOURS = dict(zip(PORTIONS, ("tab:blue", "tab:orange")))
PORTION_NAMES = dict(zip(PORTIONS, ("Wikipedia", "S2ORC")))


def shade_portions(axis, domains: Sequence[str], portions: dict[str, str], alpha: float = 0.10) -> None:
    """Shade the x range of each portion's domains (bars at 0 .. n-1), labelled for the legend."""
    for portion, colour in PORTION_COLOURS.items():
        members = [i for i, d in enumerate(domains) if portions[d] == portion]
        if members:
            axis.axvspan(min(members) - 0.5, max(members) + 0.5, color=colour, alpha=alpha,
                         label=f"{PORTION_NAMES[portion]} portion")
