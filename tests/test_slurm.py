"""The demo DAG on a real single-node SLURM cluster, every job submitted by snakemake-executor-plugin-slurm.

The fixture starts munged, slurmctld and slurmd on this machine with a local slurm.conf (no
accounting database, so job states come from squeue). It needs the Debian packages slurm-wlm and
munge (`.ci/run` installs them) and root; otherwise the test is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.builders import REPO
from tests.workflow import job_counts, small_demo_config, snakemake

pytestmark = pytest.mark.integration

MARKER = "# written by tests/test_slurm.py"
# Jobs inside an allocation call srun, which finds only the default configuration: the plugin
# removes SLURM_* variables (SLURM_CONF included) from the jobs' environment.
CONF = Path("/etc/slurm/slurm.conf")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")


def _tool(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name,) if p.exists()), None)


def _memory_mb() -> int:
    """Nine tenths of this machine's memory: slurmd drains a node that has less than declared."""
    total_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
    return int(total_kb / 1024 * 0.9)


def _config(state: Path) -> str:
    host = socket.gethostname()
    return f"""{MARKER}
ClusterName=local
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdSpoolDir={state}/spool
StateSaveLocation={state}/state
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName={host} CPUs={os.cpu_count()} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _start_munge() -> None:
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
        return
    for directory in ("/run/munge", "/var/log/munge", "/var/lib/munge", "/etc/munge"):
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "munge", "munge")
    subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", _tool("munged")], check=True, capture_output=True)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    missing = [name for name in DAEMONS if _tool(name) is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} not found): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("starting munged, slurmctld and slurmd needs root")
    if CONF.exists() and not CONF.read_text().startswith(MARKER):
        pytest.skip(f"{CONF} exists and was not written by this test: a real cluster is left alone")
    state = tmp_path_factory.mktemp("slurm")
    for sub in ("spool", "state"):
        (state / sub).mkdir()
    subprocess.run(["pkill", "-x", "slurmctld"]), subprocess.run(["pkill", "-x", "slurmd"])
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(_config(state))
    _start_munge()
    subprocess.run([_tool("slurmctld"), "-i"], check=True)
    subprocess.run([_tool("slurmd")], check=True)
    deadline = time.monotonic() + 60
    while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout:
        if time.monotonic() > deadline:
            pytest.fail(f"the SLURM node did not become idle:\n{(state / 'slurmctld.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield state
    subprocess.run(["scancel", "--user", "root"])
    subprocess.run(["pkill", "-x", "slurmctld"]), subprocess.run(["pkill", "-x", "slurmd"])
    # A slurm.conf naming a controller that is gone makes every later `scontrol show config` wait
    # ~9 s for it, and the SLURM executor plugin runs that command whenever Snakemake starts
    # (installed plugins are imported at start-up): each later Snakemake call would start 9 s late.
    CONF.unlink(missing_ok=True)


SLURM_ARGS = [
    "--workflow-profile", str(REPO / "profiles/slurm"),
    # No accounting database here: job states from squeue, no account to charge.
    "--slurm-status-command", "squeue", "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2",
    "--jobs", "2", "--default-resources", "mem_mb=2000", "runtime=30",
]


def submitted_rules(output: str) -> list[str]:
    """The rule of every job that went to SLURM, from Snakemake's log (a job's block names its rule
    and Snakemake job id; the submission line names that id)."""
    rules, current = {}, None
    for line in output.splitlines():
        match = re.match(r"(?:local)?rule (\w+):", line)
        if match:
            current = match[1]
        match = re.match(r"\s+jobid: (\d+)", line)
        if match:
            rules[match[1]] = current
    return [rules[job] for job in re.findall(r"^Job (\d+) has been submitted with SLURM jobid", output, flags=re.M)]


def test_demo_runs_as_slurm_jobs_and_one_domain_reruns_alone(slurm_cluster, tmp_path):
    configfile = small_demo_config(tmp_path / "config.yaml")
    cfg = yaml.safe_load(configfile.read_text())
    cfg["domains"]["adaptation"] = ["Culture_and_the_arts__Culture_and_Humanities", "hep-ex"]
    cfg["adaptation"]["modes"] = ["full"]
    cfg["adaptation"]["join_ablation"] = {"models": []}
    # The edge stages' 12 jobs take ~10 s of SLURM and Snakemake start-up each for ~1 s of work here;
    # their rules declare resources like the LM rules do, so the LM part of the DAG stands for them.
    cfg["edge"]["enabled"] = False
    cfg["models"]["tiny-gpt2"]["resources"] = {"adapt": {"mem_mb": 3000, "runtime": 30},
                                               "evaluate": {"mem_mb": 3000, "runtime": 30}}
    configfile.write_text(yaml.safe_dump(cfg, sort_keys=False))

    planned = job_counts(snakemake(tmp_path, "-n", configfile=configfile).output)
    # Each job starts Snakemake twice (batch script, srun) before its own imports: ~10 s a job.
    result = snakemake(tmp_path, *SLURM_ARGS, configfile=configfile, timeout=1200)
    assert result.returncode == 0, result.output[-4000:]
    submitted = submitted_rules(result.output)
    # Every job but the target rule `all` (which runs no code) is a SLURM job.
    assert sorted(submitted) == sorted(r for r, n in planned.items() if r != "all" for _ in range(n))
    assert (tmp_path / "results/tables/perplexity.tsv").is_file()

    forced = "results/adapted/tiny-gpt2/keep/full/hep-ex/metrics.json"
    rerun = snakemake(tmp_path, *SLURM_ARGS, "--forcerun", forced, configfile=configfile, timeout=1200)
    assert rerun.returncode == 0, rerun.output[-4000:]
    assert sorted(submitted_rules(rerun.output)) == sorted(
        ["adapt", "evaluate", "perplexity_table", "correlation_table", "perplexity_figure", "token_tables",
         "curves_figure"])
    assert "domain=Culture_and_the_arts__Culture_and_Humanities" not in rerun.output  # no job of the other domain
