"""Rule edge_transfer: adapt the source net to the target task in each TinyTL mode, one after another."""

import torch

from analysis.edge.stages import transfer_stage
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    modes = snakemake.params.edge["transfer"]["modes"]
    transfer_stage(snakemake.params.edge, snakemake.params.seed, snakemake.input.net,
                   dict(zip(modes, snakemake.output.json, strict=True)))
