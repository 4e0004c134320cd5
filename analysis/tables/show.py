"""Reading results tables back for ``python -m analysis show``: filter, choose columns, render."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.errors import PipelineError
from analysis.tables.common import to_markdown

TARGETS = {
    "similarity": "tables/similarity.tsv",
    "perplexity": "tables/perplexity.tsv",
    "correlation": "tables/correlation.tsv",
    "join_policy": "tables/join_policy.tsv",
}


def _read(path: Path, table: str) -> pd.DataFrame:
    if not path.is_file():
        raise PipelineError(f"{path} does not exist: build it first (`snakemake {path}`, or `make run` for the demo)")
    # Token strings such as "nan" or "null" stay strings.
    return pd.read_csv(path, sep="\t", keep_default_na=table != "tokens", na_values=[] if table == "tokens" else None)


def load_table(results: str | Path, table: str, model: str | None = None, mode: str | None = None,
               domain: str | None = None) -> pd.DataFrame:  # the token tables are those of the main grid
    """A table under ``results``. ``tokens``: every model and mode's summary, or, with a domain, that
    domain's per-token table (model and mode chosen by the filters when there are several)."""
    results = Path(results)
    if table in TARGETS:
        return _read(results / TARGETS[table], table)
    if table != "tokens":
        raise PipelineError(f"unknown table {table!r}; expected one of {', '.join([*TARGETS, 'tokens'])}")
    root = results / "tables" / "tokens"
    summaries = sorted(root.glob("*/*/summary.tsv"))
    if not summaries:
        raise PipelineError(f"no token tables under {root}: build them first (`make run` for the demo)")
    pairs = [(p.parent.parent.name, p.parent.name) for p in summaries]
    if domain is None:
        return pd.concat([_read(p, table) for p in summaries], ignore_index=True)
    chosen = [(m, d) for m, d in pairs if (model is None or m == model) and (mode is None or d == mode)]
    if len(chosen) != 1:
        options = ", ".join(f"--model {m} --mode {d}" for m, d in pairs)
        raise PipelineError(f"per-token tables exist for {options}; name one with --model and --mode")
    path = root / chosen[0][0] / chosen[0][1] / f"{domain}.tsv"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.tsv") if p.stem != "summary")
        raise PipelineError(f"no token table for domain {domain!r} ({path}); domains: {', '.join(known)}")
    return _read(path, table).assign(model=chosen[0][0], mode=chosen[0][1], domain=domain)


def select(frame: pd.DataFrame, filters: dict, table: str) -> pd.DataFrame:
    """Rows matching every given filter; a value absent from its column is an error naming the choices."""
    for key, value in filters.items():
        if value is None:
            continue
        if key not in frame.columns:
            raise PipelineError(f"table {table!r} has no column {key!r} to filter on")
        present = frame[key].astype(str)
        if value not in set(present):
            choices = ", ".join(sorted(set(present)))
            raise PipelineError(f"{key} {value!r} is not in table {table!r}; it has: {choices}")
        frame = frame[present == value]
    return frame


def render(frame: pd.DataFrame, fmt: str, columns: list[str] | None = None, limit: int | None = None) -> str:
    if columns:
        unknown = [c for c in columns if c not in frame.columns]
        if unknown:
            raise PipelineError(f"unknown column(s) {', '.join(unknown)}; columns: {', '.join(frame.columns)}")
        frame = frame[columns]
    if limit is not None:
        frame = frame.head(limit)
    if fmt == "tsv":
        return frame.to_csv(sep="\t", index=False, float_format="%.10g")
    if fmt == "json":
        return json.dumps(json.loads(frame.to_json(orient="records", double_precision=15)), indent=1) + "\n"
    return to_markdown(frame)
