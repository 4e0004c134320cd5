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

# matplotlib is imported by the figure helpers (pyplot, save_figure) when a table job draws: a job
# writing only tables does not load it.


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


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def blank_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells that do not apply (a mode's budget, a bias unit's layer) written empty, not 'nan' or '<NA>'."""
    return frame.apply(lambda c: c.astype(object).where(c.notna(), "") if c.isna().any() else c)


def label_points(axis, points: list[tuple[float, float, str, str]], step: float = 0.045) -> None:
    """Label points, moving a label to the nearest free height (with a leader line) where it would cover
    another label or point: modes and schemes often land on nearly the same memory and accuracy."""
    (x0, x1), (y0, y1) = axis.get_xlim(), axis.get_ylim()
    inches = axis.get_position().width * axis.figure.get_figwidth()
    spots = [((math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)), (y - y0) / (y1 - y0))
             for x, y, _, _ in points]  # in axes fractions
    boxes = []  # placed labels: (left, right, centre height)
    for (x, y, text, colour), (fx, fy) in sorted(zip(points, spots), key=lambda item: item[0][1]):
        width = len(text) * 7 * 0.55 / 72 / inches  # 7-point text, about 0.55 em a character
        right = fx + 0.02 + width > 1  # no room on the right: the label goes left of its point
        left = fx - 0.02 - width if right else fx + 0.02
        def free(level: float) -> bool:
            return 0.03 < level < 0.97 and not (
                any(lo < left + width and left < hi and abs(level - h) < step for lo, hi, h in boxes)
                or any(left - 0.01 < px < left + width + 0.01 and abs(level - py) < 0.6 * step
                       for px, py in spots if (px, py) != (fx, fy)))
        tries = [fy + sign * k * step for k in range(1, 20) for sign in (1, -1)]
        level = next((t for t in [fy, *tries] if free(t)), fy)  # nowhere free: overlap rather than leave the axes
        boxes.append((left, left + width, level))
        axis.annotate(text, (x, y), xytext=(left, level), textcoords="axes fraction", ha="left", va="center",
                      fontsize=7, color=colour,
                      bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.5),  # over grid and budget lines
                      arrowprops=dict(arrowstyle="-", color=colour, linewidth=0.5) if level != fy else None)
