"""Rule edge_leakage: DLG and iDLG against one defense at each configured strength."""

import torch

from analysis.edge.stages import leakage_stage
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    leakage_stage(snakemake.params.edge, snakemake.params.seed, snakemake.wildcards.defense, snakemake.output.json,
                  snakemake.output.snapshots)
