"""Rule edge_compress: pruning, quantization or distillation of the source net."""

import torch

from analysis.edge import stages
from analysis.runner import rule_log

STAGES = {"pruning": stages.pruning_stage, "quantization": stages.quantization_stage,
          "distillation": stages.distillation_stage}

with rule_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    STAGES[snakemake.wildcards.method](snakemake.params.edge, snakemake.params.seed, snakemake.input.net,
                                       snakemake.output.json)
