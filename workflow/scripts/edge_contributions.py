"""Rule edge_contributions: the accuracy gain of every bias and weight unit trained alone."""

import torch

from analysis.edge.stages import contribution_stage
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    contribution_stage(snakemake.params.edge, snakemake.params.seed, snakemake.input.net, snakemake.output.json)
