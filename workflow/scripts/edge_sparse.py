"""Rule edge_sparse: search the sparse-update scheme under one memory budget, then train it."""

import json

import torch

from analysis.edge.stages import sparse_stage
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    with open(snakemake.input.contributions, encoding="utf-8") as handle:
        contributions = json.load(handle)
    sparse_stage(snakemake.params.edge, snakemake.params.seed, snakemake.input.net, contributions,
                 float(snakemake.wildcards.budget), snakemake.output.json)
