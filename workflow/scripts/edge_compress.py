"""Rule edge_compress: pruning, quantization or distillation of the source net."""

import torch

from analysis.edge.stages import compression_stage
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    compression_stage(snakemake.wildcards.method, snakemake.params.edge, snakemake.params.seed,
                      snakemake.input.net, snakemake.output.json)
