"""How long Snakemake takes to plan the paper's full grid (a dry run of presets/paper.yaml).

    .venv/bin/python benchmarks/dag_scale.py [--repeats 3]
    .venv/bin/python benchmarks/dag_scale.py --smoke     # 2 + 2 domains of the preset, one dry run (make test)

The preset's M2D2 root is replaced by a skeleton of one-line split files for every domain it names
(the 20 adaptation and 199 similarity domains), so the dry run sees real input files; the source
corpora are hub datasets and the models hub ids, which a dry run does not open. Reports the wall
time of each `snakemake -n` and its job counts.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def skeleton(root: Path, config: dict) -> Path:
    domains = dict.fromkeys([*config["domains"]["adaptation"], *config["domains"]["similarity"]])
    for domain in domains:
        directory = root / "m2d2" / domain
        directory.mkdir(parents=True)
        for split in ("train", "valid", "test"):
            (directory / f"{split}.txt").write_text("A paragraph.\n")
    config["m2d2"]["root"] = str(root / "m2d2")
    path = root / "paper.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="two adaptation and two similarity domains, one run")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "presets/paper.yaml").read_text())
    if args.smoke:
        args.repeats = 1
        for kind in ("adaptation", "similarity"):
            config["domains"][kind] = config["domains"][kind][:2]
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    with tempfile.TemporaryDirectory() as tmp:
        configfile = skeleton(Path(tmp), config)
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = subprocess.run(
                [snakemake, "-s", str(REPO / "Snakefile"), "-d", tmp, "-n", "--quiet", "rules",
                 "--configfile", str(configfile)],
                capture_output=True, text=True,
            )
            seconds.append(time.perf_counter() - start)
            if result.returncode != 0:
                sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout + result.stderr, flags=re.M))  # one table
    if not counts:
        sys.exit("no job counts in the dry run's output:\n" + (result.stdout + result.stderr)[-3000:])
    print(f"dry run of presets/paper.yaml{' (smoke: 2 + 2 domains)' if args.smoke else ''}: median "
          f"{statistics.median(seconds):.1f} s ({', '.join(f'{s:.1f}' for s in seconds)})\n")
    print("| rule | jobs |")
    print("| --- | ---: |")
    for rule, n in counts.items():
        print(f"| {rule} | {n} |")


if __name__ == "__main__":
    main()
