"""``python -m analysis``: check a config and list what it will compute, without running Snakemake."""

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a config file and summarise it")
    check.add_argument("configfile", nargs="?", default="config.yaml")
    check.add_argument("--domains", action="store_true", help="list every domain with its portion")
    check.set_defaults(run=check_config)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        return 0
