"""``python -m analysis``: check a config, plan its memory, build DeepSpeed's ops, print results tables."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis import config as config_lib
from analysis.errors import PipelineError

# Each command imports the modules it runs when it runs (pandas for show, the plan's model code,
# DeepSpeed's op builder): `--help` and a mistyped command answer at once.


def check_config(args: argparse.Namespace) -> int:
    cfg = config_lib.load(args.configfile)
    domains = config_lib.all_domains(cfg)
    adaptation = set(cfg["domains"]["adaptation"])
    print(f"{args.configfile}: valid")
    corpora = [f"{name} ({spec['n_texts']} texts, {spec['format']})" for name, spec in cfg["corpora"].items()]
    print(f"  corpora: {', '.join(corpora)}")
    print(f"  models:  {', '.join(cfg['models']) or '(none)'}")
    print(f"  domains: {len(domains)} ({len(adaptation)} adaptation)")
    if args.domains:
        for domain in domains:
            role = "adaptation+similarity" if domain in adaptation else "similarity"
            print(f"    {config_lib.domain_portion(cfg, domain):5}  {role:21}  {domain}")
    return 0


#: Columns `show` filters on, one option each (--train-policy for train_policy).
SHOW_FILTERS = ("model", "mode", "train_policy", "domain", "corpus", "portion", "split", "distance_estimator")


def show(args: argparse.Namespace) -> int:
    from analysis.tables.show import load_table, render, select

    frame = load_table(args.results, args.table, model=args.model, mode=args.mode, domain=args.domain)
    filters = {key: getattr(args, key) for key in SHOW_FILTERS}
    frame = select(frame, filters, args.table)
    columns = args.columns.split(",") if args.columns else None
    sys.stdout.write(render(frame, args.format, columns=columns, limit=args.limit))
    return 0


def plan(args: argparse.Namespace) -> int:
    from analysis.lm import plan as plan_lib

    cfg = config_lib.load(args.configfile)
    models = args.models or list(cfg["models"])
    unknown = [m for m in models if m not in cfg["models"]]
    if unknown:
        raise PipelineError(f"--models: {', '.join(unknown)} not in {args.configfile}'s models "
                            f"({', '.join(cfg['models'])})")
    if args.gpu_peak_tflops:
        cfg["adaptation"]["plan"]["gpu_peak_tflops"] = args.gpu_peak_tflops
    records = []
    for key in models:
        target = plan_lib.config_target(cfg, key, args.gpu_memory_gb, args.gpus, args.host_memory_gb)
        record = plan_lib.plan_record(cfg, key, target, args.modes, measure_device=args.measure_device)
        tokens, source = args.tokens, "--tokens"
        if tokens is None:
            tokens, source = largest_domain_tokens(args.results, key, cfg)
        record["tokens_source"] = source
        records.append(record)
        if args.format == "md":
            print(plan_lib.plan_markdown(record, tokens, cfg["adaptation"]["curve_points"],
                                         cfg["adaptation"]["checkpoint_every"]))
            sys.stdout.flush()
    if args.format == "json":
        print(json.dumps(records, indent=1))
    return 0


def largest_domain_tokens(results: str, model: str, cfg: dict) -> tuple[int | None, str]:
    """Training tokens of the model's largest adaptation domain, from its token files if tokenised."""
    best, name = None, ""
    for domain in cfg["domains"]["adaptation"]:
        path = Path(results) / "tokens" / model / cfg["adaptation"]["join_policy"] / f"{domain}.json"
        try:
            tokens = json.loads(path.read_text())["splits"]["train"]["tokens"]
        except (OSError, ValueError, KeyError):
            continue
        if best is None or tokens > best:
            best, name = tokens, domain
    return best, f"the largest tokenised domain, {name}" if best else ""


def build_ops(args: argparse.Namespace) -> int:
    from analysis.lm.ops import build_ops as build

    for op, seconds in build().items():
        print(f"{op}: ready ({seconds:.0f} s; cached under TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a config file and summarise it")
    check.add_argument("configfile", nargs="?", default="config.yaml")
    check.add_argument("--domains", action="store_true", help="list every domain with its portion")
    check.set_defaults(run=check_config)
    table = sub.add_parser("show", help="print a results table, filtered (e.g. show perplexity --model gpt2)")
    table.add_argument("table", choices=["similarity", "perplexity", "correlation", "join_policy", "tokens"],
                       help="tokens: the token-level summary, or with --domain that domain's per-token table")
    table.add_argument("--results", default="results", help="results directory (default: results)")
    for key in SHOW_FILTERS:
        table.add_argument(f"--{key.replace('_', '-')}", dest=key, help=f"keep rows whose {key} is this")
    table.add_argument("--columns", help="comma-separated columns to print (default: all)")
    table.add_argument("--limit", type=int, help="print at most this many rows")
    table.add_argument("--format", choices=["md", "tsv", "json"], default="md")
    table.set_defaults(run=show)
    planner = sub.add_parser("plan", help="memory and runtime of every model's adaptation under each ZeRO / "
                             "offload / checkpointing setting, and the cheapest that fits")
    planner.add_argument("configfile", nargs="?", default="config.yaml")
    planner.add_argument("--gpu-memory-gb", type=float, help="memory of one GPU (default: adaptation.plan)")
    planner.add_argument("--gpus", type=int, help="GPUs (data-parallel processes) per job; 0 plans a CPU run "
                         "(default: the model's adapt gpus, else adaptation.gpus)")
    planner.add_argument("--host-memory-gb", type=float, help="host memory per job, if it should limit the plan")
    planner.add_argument("--gpu-peak-tflops", type=float, help="dense bf16 peak of one GPU (default: adaptation.plan)")
    planner.add_argument("--models", nargs="+", help="only these models (keys of models)")
    planner.add_argument("--modes", nargs="+", help="only these modes (default: adaptation.modes)")
    planner.add_argument("--measure-device", default="cpu", choices=["cpu", "cuda"],
                         help="where the reduced-depth activation measurement runs")
    planner.add_argument("--tokens", type=int, help="training tokens of a domain, for the runtime estimate "
                         "(default: the largest adaptation domain already tokenised under --results)")
    planner.add_argument("--results", default="results", help="results directory (default: results)")
    planner.add_argument("--format", choices=["md", "json"], default="md")
    planner.set_defaults(run=plan)
    ops = sub.add_parser("build-ops", help="compile DeepSpeed's CPU Adam (optimizer offload) into the extension cache")
    ops.set_defaults(run=build_ops)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        return 0
