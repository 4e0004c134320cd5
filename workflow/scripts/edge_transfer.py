"""Rule edge_transfer: adapt the source net to the target task in one TinyTL mode."""

import torch

from analysis.edge.stages import transfer
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    transfer(snakemake.params.edge, snakemake.params.seed, snakemake.input.net, snakemake.wildcards.edge_mode,
             snakemake.output.json)
