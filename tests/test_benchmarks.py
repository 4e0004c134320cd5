"""Every script in benchmarks/ runs in its smoke mode and prints a well-formed Markdown table.

A benchmark that nothing runs breaks silently when the code it measures is renamed or grows a
field (memory.py and gpu_check.py both did). The smoke modes run the same code on tiny inputs in
seconds; the full-size runs stay out of `make test`. A new script in benchmarks/ must be added
here, with its smoke command or a reason it has none.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.builders import REPO

BENCHMARKS = REPO / "benchmarks"
PYTHON = sys.executable

#: The smoke command of each script (run from the repository root).
SMOKE = {
    **{name: [PYTHON, f"benchmarks/{name}", "--smoke"] for name in (
        "compare_tables.py", "dag_scale.py", "data_scale.py", "distance_estimators.py", "distance_stage.py",
        "edge_memory.py", "edge_privacy.py", "embedding.py", "federated_api.py", "frechet.py", "gpu_wheels.py",
        "memory.py", "memory_plan.py", "perplexity.py", "sampling.py", "smollm2_training.py", "training.py")},
    # gpu_check.sh --smoke runs gpu_check.py --smoke (steps 1, 4 and 5 of the script).
    **{name: ["bash", f"benchmarks/{name}", "--smoke"] for name in ("gpu_check.sh", "scheduler.sh")},
}
#: Run by another test of this file, or by none, and why.
ELSEWHERE = {
    "demo_profile.py": "profiles a Snakemake log: test_demo_profile_smoke gives it the tests' demo run",
    "gpu_check.py": "its --smoke runs inside gpu_check.sh --smoke",
    "install.sh": "times fresh installs from the package registries (minutes, network): never in make test",
}
SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+$")


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables in ``text``: runs of lines that start and end with '|', split in cells."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|") and line.rstrip().endswith("|"):
            current.append(line.rstrip())
        elif current:
            tables.append(current)
            current = []
    return [[[cell.strip() for cell in row.strip("|").split("|")] for row in table]
            if len(table) >= 2 and SEPARATOR.match(table[1]) else None for table in tables]


def check_tables(name: str, stdout: str) -> None:
    tables = markdown_tables(stdout)
    assert tables, f"{name}: no Markdown table on stdout:\n{stdout[-2000:]}"
    for table in tables:
        assert table is not None, f"{name}: a table without its separator row:\n{stdout[-2000:]}"
        header, rows = table[0], table[2:]
        assert rows, f"{name}: a table with no rows: {header}"
        for row in rows:
            assert len(row) == len(header), f"{name}: {len(row)} cells under {len(header)} columns: {row}"


def run(name: str, command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    # PYTHON: the shell scripts' interpreter; PYTHONPATH: the benchmarks import the project.
    env = {**os.environ, "PYTHON": PYTHON, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "GPU_CHECK_FREEZE": os.devnull}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{name} --smoke exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result


def test_every_benchmark_script_has_a_smoke_test():
    scripts = {p.name for p in BENCHMARKS.iterdir() if p.suffix in (".py", ".sh") and p.name != "__init__.py"}
    assert scripts == set(SMOKE) | set(ELSEWHERE), (
        f"not covered: {sorted(scripts - set(SMOKE) - set(ELSEWHERE))}; "
        f"gone: {sorted(set(SMOKE) | set(ELSEWHERE) - scripts)}")
    for name in SMOKE:
        assert "--smoke" in (BENCHMARKS / name).read_text(), f"{name} does not document --smoke"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE))
def test_benchmark_smoke(name):
    result = run(name, SMOKE[name])
    check_tables(name, result.stdout)


@pytest.mark.integration  # reads the demo run, which runs Snakemake
def test_demo_profile_smoke(demo_run):
    workdir, _ = demo_run
    # The run's own log is the directory's first (named by start time): tests that read the run may run
    # Snakemake there too (dry runs), each adding a log of its own (a shuffled order found it).
    log = min((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    result = run("demo_profile.py", [PYTHON, "benchmarks/demo_profile.py", "--smoke", "--log", str(log)])
    check_tables("demo_profile.py", result.stdout)
    assert "Critical path" in result.stdout


def test_the_table_check_refuses_broken_tables():
    good = "| a | b |\n| --- | ---: |\n| 1 | 2 |\n"
    check_tables("good", "text\n" + good + "\nmore text")
    for broken in ("no table at all", "| a | b |\n| 1 | 2 |\n", "| a | b |\n| --- | --- |\n",
                   "| a | b |\n| --- | --- |\n| 1 | 2 | 3 |\n"):
        with pytest.raises(AssertionError):
            check_tables("broken", broken)
