"""Rule edge_pretrain: train the source net on the source task."""

import torch

from analysis.edge.stages import pretrain
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    pretrain(snakemake.params.edge, snakemake.params.seed, snakemake.output.net, snakemake.output.metrics)
