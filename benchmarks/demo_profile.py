"""Where the demo DAG spends its time: per rule, the share spent importing, and the critical path.

    .venv/bin/python benchmarks/demo_profile.py --run [--workdir DIR]   # run the demo, then profile it
    .venv/bin/python benchmarks/demo_profile.py --log .snakemake/log/<run>.snakemake.log
    .venv/bin/python benchmarks/demo_profile.py --smoke --log LOG   # one interpreter per measurement, imports
                                                                    # of two rules' scripts (make test)

* Per job, wall time from Snakemake's log (each job's start and finish lines, to the second; this
  covers every rule, with or without a benchmark file) and, where the rule writes one, the seconds
  of its benchmark file (the job's own process).
* Importing, per job: the start-up every script job pays before its first line (the interpreter and
  Snakemake's script preamble, `from snakemake import script`), the script's own top-level imports
  (workflow/scripts/<name>.py, found from the rule's `script:`), both timed in fresh interpreters
  (best of --repeats), and what the job imports once it runs (torch, transformers, DeepSpeed, Ray
  are imported inside the functions that need them): with --run the demo runs with
  PYTHONPROFILEIMPORTTIME=1, so every job writes Python's own import timings into its log, and the
  top-level entries' cumulative times are summed.
* The critical path: jobs linked by files (an output of one is an input of another), the longest
  chain by wall time. It bounds the DAG's wall time from below however many cores there are.

With --run the demo runs from scratch in --workdir (default: a temporary directory; the config is
this repository's config.yaml) under /usr/bin/time -v, with the DeepSpeed extension cache as it is.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

JOB_START = re.compile(r"^(?:local)?rule (\w+):$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def parse_log(path: Path) -> dict[int, dict]:
    """Jobs of a Snakemake log: rule, wildcards, inputs, outputs, start and finish (seconds)."""
    jobs, stamp, current = {}, None, None
    for line in path.read_text().splitlines():
        match = STAMP.match(line)
        if match:
            stamp = datetime.strptime(match[1], "%a %b %d %H:%M:%S %Y").timestamp()
            continue
        match = JOB_START.match(line)
        if match:
            current = {"rule": match[1], "start": stamp, "input": [], "output": [], "wildcards": ""}
            continue
        if current is not None and line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            if key in ("input", "output", "log"):
                current[key] = [v.strip() for v in value.split(",") if v.strip()]
            elif key == "wildcards":
                current["wildcards"] = value
            elif key == "jobid":
                jobs[int(value)] = current
            continue
        current = None
        match = FINISHED.match(line)
        if match and int(match[1]) in jobs:
            jobs[int(match[1])]["finish"] = stamp
    return {k: v for k, v in jobs.items() if "finish" in v}


def rule_scripts() -> dict[str, Path]:
    """Each rule's script, from the rule files' `rule name:` and `script:` lines."""
    scripts, rule = {}, None
    for smk in [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]:
        lines = smk.read_text().splitlines()
        for i, line in enumerate(lines):
            match = re.match(r"^rule (\w+):", line)
            if match:
                rule = match[1]
            if line.strip() == "script:" and rule and i + 1 < len(lines):
                scripts[rule] = (smk.parent / lines[i + 1].strip().strip('"')).resolve()
    return scripts


def top_level_imports(script: Path) -> list[str]:
    """The import statements of a script's module level and of its `with` blocks, as source lines."""
    tree = ast.parse(script.read_text())
    statements = []

    def visit(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                statements.append(ast.unparse(node))
            elif isinstance(node, (ast.With, ast.If, ast.Try)):
                visit(node.body)

    visit(tree.body)
    return statements


def import_seconds(statements: list[str], repeats: int) -> float:
    """Best of ``repeats`` fresh interpreters: seconds to run ``statements`` (interpreter start excluded)."""
    code = "import time; t = time.perf_counter()\n" + "\n".join(statements) + "\nprint(time.perf_counter() - t)"
    times = []
    for _ in range(repeats):
        out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(f"importing {statements} failed:\n{out.stderr[-2000:]}")
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return min(times)


def startup_seconds(repeats: int) -> float:
    """A script job's start before its first line: the interpreter and Snakemake's preamble import."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([PYTHON, "-c", "from snakemake import script"], check=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return min(times)


IMPORT_TIME = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| (\S.*)$")


def logged_import_seconds(log: Path) -> float | None:
    """Seconds of the imports a job logged (PYTHONPROFILEIMPORTTIME): the sum of the top-level
    entries' cumulative times; None when the log holds none."""
    if not log.is_file():
        return None
    total = [int(m[1]) for m in map(IMPORT_TIME.match, log.read_text(errors="replace").splitlines()) if m]
    return sum(total) / 1e6 if total else None


def critical_path(jobs: dict[int, dict]) -> tuple[float, list[int]]:
    """The longest chain of jobs by wall time, jobs linked through files."""
    producer = {path: job for job, spec in jobs.items() for path in spec["output"]}
    parents = {job: {producer[p] for p in spec["input"] if p in producer and producer[p] != job}
               for job, spec in jobs.items()}
    best: dict[int, tuple[float, list[int]]] = {}

    def longest(job: int) -> tuple[float, list[int]]:
        if job not in best:
            duration = jobs[job]["finish"] - jobs[job]["start"]
            chains = [longest(parent) for parent in parents[job]]
            length, path = max(chains, default=(0.0, []))
            best[job] = (length + duration, [*path, job])
        return best[job]

    sys.setrecursionlimit(10_000)
    return max((longest(job) for job in jobs), default=(0.0, []))


def run_demo(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    command = ["/usr/bin/time", "-v", str(Path(PYTHON).with_name("snakemake")), "-s", str(ROOT / "Snakefile"),
               "-d", str(workdir), "--cores", "2", "--configfile", str(workdir / "config.yaml")]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(result.stderr[-4000:])
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    print(f"demo DAG from scratch in {workdir}: {wall:.0f} s wall"
          + (f", largest process {int(peak[1]) / 1024:.0f} MiB" if peak else ""))
    return max((workdir / ".snakemake/log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="run the demo DAG from scratch first")
    parser.add_argument("--workdir", type=Path, help="where --run runs (default: a temporary directory)")
    parser.add_argument("--log", type=Path, help="a Snakemake log to profile (default: the run's)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh interpreters per import measurement")
    parser.add_argument("--smoke", action="store_true",
                        help="with --log: one interpreter per measurement, script imports of two rules only")
    args = parser.parse_args()
    if args.smoke:
        if args.run or args.log is None:
            parser.error("--smoke profiles a given --log (make test gives it the tests' demo run)")
        args.repeats = 1
    if args.run:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="demo_profile_"))
        args.log = run_demo(workdir)
    if args.log is None:
        parser.error("give --log, or --run")
    jobs = parse_log(args.log)
    if not jobs:
        raise SystemExit(f"{args.log}: no finished jobs found")
    first = min(j["start"] for j in jobs.values())
    last = max(j["finish"] for j in jobs.values())
    scripts = rule_scripts()
    startup = startup_seconds(args.repeats)

    workdir = args.log.parents[2]
    by_rule = defaultdict(lambda: {"wall": [], "imports": []})
    for spec in jobs.values():
        by_rule[spec["rule"]]["wall"].append(spec["finish"] - spec["start"])
        logged = logged_import_seconds(workdir / spec["log"][0]) if spec.get("log") else None
        if logged is not None:
            by_rule[spec["rule"]]["imports"].append(logged)
    print(f"\n{len(jobs)} jobs, {last - first:.0f} s from the first start to the last finish; a script job "
          f"starts in {startup:.2f} s (interpreter and Snakemake's preamble) before its script's own imports\n")
    print("| rule | jobs | wall s, sum | mean | max | script's imports s | job's imports s, mean (logged) "
          "| start-up + imports, share of the mean |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    measured_scripts = [rule for rule in by_rule if rule in scripts][:2] if args.smoke else list(scripts)
    for rule, seen in by_rule.items():
        script = scripts.get(rule) if rule in measured_scripts else None
        top = import_seconds(top_level_imports(script), args.repeats) if script else 0.0
        logged = statistics.fmean(seen["imports"]) if seen["imports"] else 0.0
        walls = seen["wall"]
        rows.append((sum(walls), rule, len(walls), statistics.fmean(walls), max(walls), top, logged,
                     bool(seen["imports"])))
    for total, rule, count, mean, longest, top, logged, measured in sorted(rows, reverse=True):
        spent = (startup if rule in scripts else 0.0) + top + logged
        share = f"{min(1.0, spent / mean):.0%}" if mean > 0 else "-"
        print(f"| {rule} | {count} | {total:.0f} | {mean:.1f} | {longest:.0f} | {top:.2f} | "
              f"{f'{logged:.2f}' if measured else '-'} | {share} |")
    total_wall = sum(r[0] for r in rows)
    total_spent = sum(r[2] * ((startup if r[1] in scripts else 0.0) + r[5] + r[6]) for r in rows)
    print(f"| **all** | {len(jobs)} | {total_wall:.0f} | | | | | {total_spent / total_wall:.0%} of job time |")

    length, path = critical_path(jobs)
    print(f"\nCritical path: {length:.0f} s of the {last - first:.0f} s wall ({len(path)} jobs)\n")
    print("| job | wildcards | start s | wall s |")
    print("|---|---|---:|---:|")
    for job in path:
        spec = jobs[job]
        print(f"| {spec['rule']} | {spec['wildcards']} | {spec['start'] - first:.0f} | "
              f"{spec['finish'] - spec['start']:.0f} |")


if __name__ == "__main__":
    main()
