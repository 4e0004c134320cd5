"""Rule edge_federated: FedAvg over simulated clients under one partition scheme."""

import torch

from analysis.edge.stages import federated_stage
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    torch.set_num_threads(1)
    federated_stage(snakemake.params.edge, snakemake.params.seed, snakemake.wildcards.partition,
                    snakemake.output.json, threads=snakemake.threads)
