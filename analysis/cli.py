"""``python -m analysis``: check a config, and print filtered results tables."""

from __future__ import annotations

import argparse
import sys

from analysis import config as config_lib
from analysis.errors import PipelineError


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


def show(args: argparse.Namespace) -> int:
    from analysis.tables.show import load_table, render, select

    frame = load_table(args.results, args.table, model=args.model, mode=args.mode, domain=args.domain)
    filters = {key: getattr(args, key)
               for key in ("model", "mode", "train_policy", "domain", "corpus", "portion", "split")}
    frame = select(frame, filters, args.table)
    columns = args.columns.split(",") if args.columns else None
    sys.stdout.write(render(frame, args.format, columns=columns, limit=args.limit))
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
    for key in ("model", "mode", "train_policy", "domain", "corpus", "portion", "split"):
        table.add_argument(f"--{key.replace('_', '-')}", dest=key, help=f"keep rows whose {key} is this")
    table.add_argument("--columns", help="comma-separated columns to print (default: all)")
    table.add_argument("--limit", type=int, help="print at most this many rows")
    table.add_argument("--format", choices=["md", "tsv", "json"], default="md")
    table.set_defaults(run=show)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        return 0
