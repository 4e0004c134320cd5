"""Which result tables two demo runs share byte for byte, and where the others differ.

    .venv/bin/python benchmarks/compare_tables.py OLD/results NEW/results
    .venv/bin/python benchmarks/compare_tables.py --smoke     # two small made-up runs (make test)

Every ``.tsv`` and ``.md`` under a ``tables`` folder of OLD is compared with its twin in NEW. For a
``.tsv`` that differs, the columns that differ are listed, with the largest absolute difference of
each numeric one; columns that record seconds are named but not quantified (they differ between any
two runs). Used to show that a change left the demo's numbers alone, or moved only what it meant to.
"""

from __future__ import annotations

import argparse
import filecmp
import tempfile
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
            lines.append(f"    {column}: largest abs(old - new) {(old - new).abs().max():.6g}")
        else:
            changed = x[column] != y[column]
            lines.append(f"    {column}: {x[column][changed].head(2).tolist()} -> {y[column][changed].head(2).tolist()}")
    return lines


def compare(old_root: Path, new_root: Path) -> None:
    """One Markdown table: each table of either run, whether it is identical, and how it differs."""
    old, new = tables(old_root), tables(new_root)
    rows, same = [], 0
    for rel in sorted(old | new):
        if rel not in new or rel not in old:
            rows.append((rel, f"only in {old_root if rel in old else new_root}", ""))
            continue
        a, b = old_root / rel, new_root / rel
        if filecmp.cmp(a, b, shallow=False):
            same += 1
            rows.append((rel, "identical", ""))
        elif rel.suffix == ".tsv":
            rows.append((rel, "differs", "; ".join(line.strip() for line in compare_tsv(a, b))))
        else:
            rows.append((rel, "differs", "markdown; see its .tsv"))
    print("| table | status | how |")
    print("| --- | --- | --- |")
    for rel, status, how in rows:
        print(f"| {rel} | {status} | {how} |")
    print(f"\n{same} of {len(old & new)} shared tables identical")


def smoke(root: Path) -> None:
    """Two small runs: one table identical, one with a changed number and seconds, one in each only."""
    for run, (value, seconds) in {"old": (1.0, 3.2), "new": (1.5, 4.1)}.items():
        directory = root / run / "results" / "tables"
        directory.mkdir(parents=True)
        pd.DataFrame({"domain": ["a", "b"], "ppl": [10.0, 12.0]}).to_csv(directory / "same.tsv", sep="\t", index=False)
        pd.DataFrame({"domain": ["a"], "ppl": [value], "train_seconds": [seconds]}).to_csv(
            directory / "moved.tsv", sep="\t", index=False)
        (directory / f"{run}_only.md").write_text("| x |\n| --- |\n| 1 |\n")
    compare(root / "old" / "results", root / "new" / "results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, nargs="?")
    parser.add_argument("new", type=Path, nargs="?")
    parser.add_argument("--smoke", action="store_true", help="compare two small made-up runs")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            smoke(Path(tmp))
        return
    if args.old is None or args.new is None:
        parser.error("give OLD and NEW results directories (or --smoke)")
    compare(args.old, args.new)


if __name__ == "__main__":
    main()
