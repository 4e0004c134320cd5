"""Rule edge_compress: pruning, quantization and distillation of the source net, one after another."""

import torch

from analysis.edge.names import COMPRESSIONS
from analysis.edge.stages import compression_stages
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    compression_stages(snakemake.params.edge, snakemake.params.seed, snakemake.input.net,
                       dict(zip(COMPRESSIONS, snakemake.output.json, strict=True)))
