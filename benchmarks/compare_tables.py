"""Which result tables two demo runs share byte for byte, and where the others differ.

    .venv/bin/python benchmarks/compare_tables.py OLD/results NEW/results

Every ``.tsv`` and ``.md`` under a ``tables`` folder of OLD is compared with its twin in NEW. For a
``.tsv`` that differs, the columns that differ are listed, with the largest absolute difference of
each numeric one; columns that record seconds are named but not quantified (they differ between any
two runs). Used to show that a change left the demo's numbers alone, or moved only what it meant to.
"""

from __future__ import annotations

import argparse
import filecmp
from pathlib import Path

import pandas as pd


def is_seconds(column: str) -> bool:
    return "second" in column or column.endswith("_s")


def tables(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")
            if p.is_file() and p.suffix in (".tsv", ".md") and "tables" in p.relative_to(root).parts}


def compare_tsv(a: Path, b: Path) -> list[str]:
    x, y = pd.read_csv(a, sep="\t"), pd.read_csv(b, sep="\t")
    if list(x.columns) != list(y.columns) or len(x) != len(y):
        return [f"    columns or rows differ: {list(x.columns)} x {len(x)} -> {list(y.columns)} x {len(y)}"]
    lines = []
    for column in (c for c in x.columns if not x[c].equals(y[c])):
        if is_seconds(column):
            lines.append(f"    {column}: seconds")
            continue
        old, new = pd.to_numeric(x[column], errors="coerce"), pd.to_numeric(y[column], errors="coerce")
        if old.notna().all() and new.notna().all():
            lines.append(f"    {column}: max |old - new| {(old - new).abs().max():.6g}")
        else:
            changed = x[column] != y[column]
            lines.append(f"    {column}: {x[column][changed].head(2).tolist()} -> {y[column][changed].head(2).tolist()}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args()
    old, new = tables(args.old), tables(args.new)
    same = 0
    for rel in sorted(old & new):
        a, b = args.old / rel, args.new / rel
        if filecmp.cmp(a, b, shallow=False):
            same += 1
        elif rel.suffix == ".tsv":
            print(f"differs: {rel}", *compare_tsv(a, b), sep="\n")
        else:
            print(f"differs: {rel} (markdown; see its .tsv)")
    for rel in sorted(old - new):
        print(f"only in {args.old}: {rel}")
    for rel in sorted(new - old):
        print(f"only in {args.new}: {rel}")
    print(f"{same} of {len(old & new)} shared tables identical")


if __name__ == "__main__":
    main()
