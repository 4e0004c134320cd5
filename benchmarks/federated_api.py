"""FedAvg launched by the deprecated ``flwr.simulation.run_simulation`` against ``flwr run``.

    .venv/bin/python benchmarks/federated_api.py [--repeats 3] [--clients 4] [--rounds 3] [--local-steps 5]
    .venv/bin/python benchmarks/federated_api.py --smoke

Flower 1.41 logs on every ``run_simulation`` call that it is deprecated in favour of ``flwr run``.
``flwr run APP [CONNECTION]`` builds a FAB from the app directory (``benchmarks/federated_app``: a
pyproject.toml whose ``[tool.flwr.app.components]`` name the ServerApp and ClientApp) and submits it
over HTTP to a SuperLink; a simulation SuperLink (``flower-superlink --simulation``) hands the run to
its ``flower-superexec``, which starts one ``flwr-simulation`` process per run, which installs the
FAB under ``$FLWR_HOME/apps``, starts Ray and runs the ServerApp and the ClientApps there. The
pipeline's job only waits (``--stream`` prints the run's log until it ends), so data and results
travel through files: the job writes the clients' ``.npz``, the test split and the initial weights
into a job directory named by ``--run-config job-dir=...``; the ServerApp writes its per-round
records there.

Every run is a fresh Python process, as a pipeline job is (imports and start-up count), timed from
its launch to its exit; the paths alternate run by run (these machines are noisy):

- ``run_simulation``: ``analysis.edge.federated.federated_averaging``, what the pipeline runs.
- ``flwr run (job's SuperLink)``: what a pipeline job would have to do to stay isolated: its own
  ``FLWR_HOME`` (a temp dir), its own ``flower-superlink --simulation`` on a free port (no per-run
  ``uv sync``: the job's environment already holds the app's dependencies), a connection to it in
  ``$FLWR_HOME/config.toml``, ``flwr run --stream``, then the SuperLink stopped.
- ``flwr run (local SuperLink)``: Flower's default connection (``:local:``): the first ``flwr run``
  starts a detached SuperLink on the fixed port 127.0.0.1:39091 (``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``),
  later runs reuse it, and it outlives the job. Skipped when that port already answers.

Both ``flwr run`` paths run the same FedAvg code (``train_reply`` and ``fedavg_server`` of
analysis/edge/federated.py) on the same seeded partition and initial weights; the table says
whether every round's test accuracy, test loss and train loss equal those of the first
``run_simulation`` run (the dirichlet runs: of the concurrent ``run_simulation`` one). The full run
also starts the two partitions at once (as Snakemake does) on each path, once more for the local
SuperLink with a FLWR_HOME per job (as per-job temp dirs on one node would give), and makes the
ServerApp raise on the kept path and the job's-SuperLink path, to show what the job sees of a failed
run. "left" counts the Flower and Ray processes the run started (found by a marker in their
environment) still alive 2 s after the job exited; the benchmark ends them all before it exits.

The Markdown table goes to stdout, the jobs' logs and progress to stderr. ``--smoke`` (2 clients,
1 round, 1 local step; one run of ``run_simulation``, then one of ``flwr run`` on the job's SuperLink;
about 50 s on 2 busy cores, most of it Ray's start-up) exits non-zero when either fails or their
numbers differ: it checks that the kept path and the ``flwr run`` path still run and agree.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = Path(__file__).resolve().parent / "federated_app"
BIN = Path(sys.executable).parent
MARKER = "FEDAVG_API_BENCH"  # environment variable every process a run starts inherits
LOCAL_PORT = 39091  # flwr.cli.constant.LOCAL_SUPERLINK_HTTP_API_PORT's default
PATHS = {"run_simulation": "run_simulation", "job": "flwr run (job's SuperLink)",
         "local": "flwr run (local SuperLink)"}
FLOWER_PROCESSES = ("flower-superlink", "flower-superexec", "flwr-simulation", "raylet", "gcs_server", "ray::",
                    "default_worker", "log_monitor", "dashboard", "runtime_env", "flwr")  # first match names it


def note(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --- the job: one FedAvg run in this (fresh) process ------------------------------------------------

def _task_and_settings(spec: dict):
    from analysis.config import settings_from
    from analysis.edge.data import load_task
    from analysis.edge.federated import FederatedSettings

    task = load_task({"dataset": "digits"}, image_size=spec["image_size"], channels=1, seed=spec["seed"])
    settings = settings_from(FederatedSettings, clients=spec["clients"], rounds=spec["rounds"],
                             local_steps=spec["local_steps"], threads=spec["threads"], seed=spec["seed"])
    return task, settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.4).is_success
    except httpx.HTTPError:
        return False


def _flower_env(home: Path) -> dict:
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_UPDATE_CHECK="1")
    # The SuperLink starts flower-superexec and flwr-simulation by name: the venv's bin must be on PATH.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def job_run_simulation(spec: dict) -> dict:
    import torch

    from analysis.edge.federated import federated_averaging

    torch.set_num_threads(1)  # as workflow/scripts/edge_federated.py
    task, settings = _task_and_settings(spec)
    if spec.get("fail"):
        from analysis.edge import federated

        def failing_server(*args, **kwargs):
            raise ValueError("injected ServerApp failure")

        federated.fedavg_server = failing_server
    called = time.time()
    result = federated_averaging(task.train, task.test, spec["scheme"], settings, spec["image_size"])
    for record in result["rounds"]:
        record["epoch"] = called + record["seconds"]
    return result


def job_flwr_run(spec: dict, where: str, work: Path, home: Path) -> dict:
    """FedAvg as a Flower App: job files in ``work``, ``flwr run`` against a SuperLink (see the module doc)."""
    import torch

    from analysis.edge.federated import prepare, summarize, write_client_data

    torch.set_num_threads(1)
    task, settings = _task_and_settings(spec)
    start = time.perf_counter()
    job = prepare(task.train, spec["scheme"], settings, spec["image_size"])
    work.mkdir(parents=True, exist_ok=True)
    write_client_data(str(work / "clients.npz"), task.train, job)
    torch.save({"images": task.test.images, "labels": task.test.labels, "classes": task.test.classes},
               work / "test.pt")
    torch.save(job.initial, work / "initial.pt")
    (work / "spec.json").write_text(json.dumps({"settings": settings.__dict__, "net_settings": job.net_settings}))
    env = _flower_env(home)
    home.mkdir(parents=True, exist_ok=True)
    superlink = None
    try:
        if where == "job":
            port = _free_port()
            (home / "config.toml").write_text(
                f'[superlink]\ndefault = "job"\n\n[superlink.job]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
            with open(work / "superlink.log", "w") as log:
                superlink = subprocess.Popen(
                    [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
                     "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"],
                    env=env, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            while not _healthy(port):
                if superlink.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the job's SuperLink did not start; see {work / 'superlink.log'}")
                time.sleep(0.2)
            connection = "job"
        else:
            connection = "local"  # the default config.toml flwr writes: address ":local:"
        command = [str(BIN / "flwr"), "run", str(APP_DIR), connection, "--stream",
                   "--run-config", f"job-dir={json.dumps(str(work))} fail={str(bool(spec.get('fail'))).lower()}",
                   "--federation-config", f"num-supernodes={settings.clients} client-resources-num-cpus=1 "
                   f"client-resources-num-gpus=0.0 init-args-num-cpus={settings.threads}"]
        with open(work / "flwr-run.log", "w") as log:
            returncode = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        result_path = work / "result.json"
        if not result_path.exists():
            text = (work / "flwr-run.log").read_text()
            box = [line.strip("\u2502 ") for line in text.splitlines() if line.startswith("\u2502")]  # the CLI's error
            last = [line for line in text.splitlines() if "Error" in line or "ERROR" in line]
            cause = " ".join(box) if box else " / ".join(last[-3:])
            raise RuntimeError(f"flwr run exited with {returncode}, no result; {cause}\n{text[-3000:]}")
        rounds = json.loads(result_path.read_text())["rounds"]
    finally:
        if superlink is not None:
            superlink.terminate()
            try:
                superlink.wait(timeout=30)
            except subprocess.TimeoutExpired:
                superlink.kill()
    first = time.time() - (time.perf_counter() - start)  # this job's start on the server's clock
    for record in rounds:
        record["epoch"] = record["seconds"]
        record["seconds"] -= first
    result = summarize(job, settings, len(task.train.classes), rounds, time.perf_counter() - start)
    result["flwr_run_exit"] = returncode
    result["apps_installed_here"] = len(list((home / "apps").glob("*"))) if (home / "apps").exists() else 0
    return result


def job_main(args) -> int:
    spec = json.loads(args.job)
    try:
        if args.path == "run_simulation":
            result = job_run_simulation(spec)
        else:
            result = job_flwr_run(spec, args.path, Path(args.work), Path(args.home))
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported in the table
        note(f"[{args.path} {spec['scheme']}] failed: {exc}")
        result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:600]}"}
    Path(args.out).write_text(json.dumps(result))
    return 0 if result["ok"] else 1


# --- the driver ---------------------------------------------------------------------------------------

def marked(token: str) -> list:
    """Processes whose environment carries ``token`` (those a run started, however detached)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if proc.info["pid"] != os.getpid() and proc.environ().get(MARKER) == token:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def describe(procs) -> str:
    names = []
    for proc in procs:
        cmd = " ".join(proc.info.get("cmdline") or [proc.info.get("name") or "?"])
        name = next((n for n in FLOWER_PROCESSES if n in cmd), proc.info.get("name") or "?")
        names.append(name)
    return ", ".join(f"{n} x{names.count(n)}" if names.count(n) > 1 else n for n in sorted(set(names))) or "none"


def end(token: str) -> None:
    """Stop every process ``token`` marks: these are the benchmark's own (detached daemons included)."""
    import psutil

    procs = marked(token)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def launch(path: str, scheme: str, spec: dict, tmp: Path, token: str, home: Path | None = None):
    name = f"{path}-{scheme}-{uuid.uuid4().hex[:6]}"
    work, out = tmp / name, tmp / f"{name}.json"
    home = home or tmp / f"{name}-flwr-home"
    command = [sys.executable, __file__, "--job", json.dumps({**spec, "scheme": scheme}), "--path", path,
               "--work", str(work), "--home", str(home), "--out", str(out)]
    env = dict(os.environ, **{MARKER: token})
    return {"path": path, "scheme": scheme, "out": out, "token": token, "start": time.time(),
            "proc": subprocess.Popen(command, env=env, cwd=ROOT, stdout=sys.stderr)}


def finish(run: dict) -> dict:
    run["proc"].wait()
    run["wall"] = time.time() - run["start"]
    run["result"] = json.loads(run["out"].read_text()) if run["out"].exists() else {"ok": False, "error": "no output"}
    time.sleep(2)
    run["left"] = marked(run["token"])
    return run


def same_numbers(result: dict, reference: dict | None) -> str:
    if reference is None or not result.get("ok"):
        return "-"
    keys = ("test_accuracy", "test_loss", "train_loss")
    ours = [[r.get(k) for k in keys] for r in result["rounds"]]
    theirs = [[r.get(k) for k in keys] for r in reference["rounds"]]
    if ours == theirs:
        return "identical"
    differ = [r["round"] for r, a, b in zip(result["rounds"], ours, theirs) if a != b]
    return f"differ (rounds {differ})"


def timings(run: dict) -> dict:
    """Seconds from the job's launch to the initial model's score, of round 1 (Ray's actors start) and of the
    later rounds (median)."""
    rounds = run["result"]["rounds"]
    durations = [b["seconds"] - a["seconds"] for a, b in zip(rounds, rounds[1:])]
    return {"wall": run["wall"], "to_round_0": rounds[0]["epoch"] - run["start"], "round_1": durations[0],
            "later": statistics.median(durations[1:]) if len(durations) > 1 else None}


def row(label: str, run: dict, reference: dict | None) -> list[str]:
    result = run["result"]
    left = f"{len(run['left'])} ({describe(run['left'])})"
    if not result.get("ok"):
        error = " ".join(ANSI.sub("", result.get("error", "?").split("\n")[0]).translate(BOX).split())
        return [label, run["scheme"], "no: " + error[:200],
                f"{run['wall']:.1f}", "-", "-", "-", "-", "-", left]
    t = timings(run)
    return [label, run["scheme"], "yes", f"{t['wall']:.1f}", f"{t['to_round_0']:.1f}", f"{t['round_1']:.1f}",
            "-" if t["later"] is None else f"{t['later']:.2f}", f"{result['final_test_accuracy']:.4f}",
            same_numbers(result, reference), left]


def median_row(label: str, runs: list[dict], baseline: list[dict] | None) -> list[str]:
    """Medians over the runs that finished; with ``baseline`` (run_simulation's runs of the same repeats), the
    label adds the median of the wall-time differences repeat by repeat (the pairs ran back to back)."""
    done = [timings(r) for r in runs if r["result"].get("ok")]
    med = {k: statistics.median(t[k] for t in done) if done and done[0][k] is not None else None
           for k in ("wall", "to_round_0", "round_1", "later")}
    cells = ["-" if v is None else f"{v:.2f}" if k == "later" else f"{v:.1f}" for k, v in med.items()]
    if baseline is not None:
        paired = [r["wall"] - b["wall"] for r, b in zip(runs, baseline) if r["result"].get("ok") and b["result"].get("ok")]
        if paired:
            label += f" (wall minus run_simulation's of the same repeat: median {statistics.median(paired):+.1f} s, " \
                     f"range {min(paired):+.1f} to {max(paired):+.1f})"
    return [label, runs[0]["scheme"], f"{len(done)}/{len(runs)}", *cells, "-", "-", "-"]


BOX = str.maketrans({c: " " for c in "|\u256d\u256e\u2570\u256f\u2502\u2500"})  # rich's error box
ANSI = re.compile(r"\x1b\[[0-9;]*m")
HEADER = ["path", "partition", "ok", "wall s (job process)", "launch to round-0 score s", "round 1 s",
          "later rounds s (median)", "final test accuracy", "every round's test accuracy, test loss, train loss vs run_simulation",
          "Flower/Ray processes left 2 s after"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2 clients, 1 round, one run of run_simulation and "
                        "of flwr run on the job's SuperLink (about a minute)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="Ray's CPUs (edge.federated.threads)")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-concurrent", action="store_true", help="skip the two-partitions-at-once runs")
    # One job (internal): the driver starts each run as a fresh process.
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        return job_main(args)

    if args.smoke:
        args.clients, args.rounds, args.local_steps, args.repeats, args.no_concurrent = 2, 1, 1, 1, True
    spec = {"clients": args.clients, "rounds": args.rounds, "local_steps": args.local_steps, "threads": args.threads,
            "image_size": args.image_size, "seed": args.seed}
    paths = ["run_simulation", "job"]
    if not args.smoke:
        if _healthy(LOCAL_PORT):
            note(f"127.0.0.1:{LOCAL_PORT} already answers (someone's local SuperLink): local-SuperLink path skipped")
        else:
            paths.append("local")
    note(f"FedAvg on digits, {spec}, paths {paths}, {args.repeats} repeat(s)")
    tokens = {path: f"{path}-{uuid.uuid4().hex}" for path in paths}
    rows, failures = [], 0
    reference = None
    with tempfile.TemporaryDirectory(prefix="federated-api-") as tmp_name:
        tmp = Path(tmp_name)
        local_home = tmp / "local-flwr-home"  # shared by the local runs, as ~/.flwr is by a user's jobs
        try:
            runs: dict[str, list] = {path: [] for path in paths}
            for repeat in range(args.repeats):
                for path in paths:
                    run = finish(launch(path, "iid", spec, tmp, tokens[path], local_home if path == "local" else None))
                    if path == "run_simulation" and reference is None and run["result"].get("ok"):
                        reference = run["result"]
                    runs[path].append(run)
                    failures += not run["result"].get("ok")
                    rows.append(row(f"{PATHS[path]} #{repeat + 1}", run, reference))
                    note(" | ".join(rows[-1]))
            if args.repeats > 1:
                for path in paths:
                    rows.append(median_row(f"{PATHS[path]}: median of the runs that finished", runs[path],
                                           None if path == "run_simulation" else runs["run_simulation"]))
            if "local" in paths:
                end(tokens["local"])  # the detached local SuperLink, so the concurrent runs start cold
            if not args.no_concurrent:
                dirichlet_reference = None
                for path in paths:
                    token = f"{path}-pair-{uuid.uuid4().hex}"
                    homes = [tmp / f"pair-{path}-flwr-home"] * 2 if path == "local" else [None, None]
                    pair = [launch(path, scheme, spec, tmp, token, home) for scheme, home in
                            zip(("iid", "dirichlet"), homes)]
                    pair = [finish(run) for run in pair]
                    if path == "run_simulation" and pair[1]["result"].get("ok"):
                        dirichlet_reference = pair[1]["result"]
                    for run, ref in zip(pair, (reference, dirichlet_reference)):
                        failures += not run["result"].get("ok")
                        rows.append(row(f"{PATHS[path]}, iid + dirichlet at once", run, ref))
                        note(" | ".join(rows[-1]))
                    end(token)
                if "local" in paths:
                    # Two jobs with their own FLWR_HOME (e.g. per-job TMPDIR on one SLURM node): one port.
                    token = f"local-homes-{uuid.uuid4().hex}"
                    pair = [launch("local", scheme, spec, tmp, token, tmp / f"own-home-{scheme}")
                            for scheme in ("iid", "dirichlet")]
                    pair = [finish(run) for run in pair]
                    for run, ref in zip(pair, (reference, dirichlet_reference)):
                        failures += not run["result"].get("ok")
                        installed = run["result"].get("apps_installed_here")
                        label = (f"{PATHS['local']}, at once, own FLWR_HOME each "
                                 f"(ran on {'its own' if installed else 'the other job' + chr(39) + 's'} SuperLink)")
                        rows.append(row(label, run, ref))
                        note(" | ".join(rows[-1]))
                    end(token)
            if not args.smoke:
                # A ServerApp that raises: does the job fail, and with the ServerApp's error? (Expected to fail.)
                for path in ("run_simulation", "job"):
                    token = f"{path}-fail-{uuid.uuid4().hex}"
                    run = finish(launch(path, "iid", {**spec, "fail": True}, tmp, token))
                    rows.append(row(f"{PATHS[path]}, ServerApp raises (should fail)", run, None))
                    note(" | ".join(rows[-1]))
                    end(token)
        finally:
            for token in tokens.values():
                end(token)
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    mismatched = [r for r in rows if r[8].startswith("differ")]
    if args.smoke and (failures or mismatched):
        note(f"smoke: {failures} failed run(s), {len(mismatched)} run(s) with other numbers than run_simulation")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
