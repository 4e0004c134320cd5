"""Rule edge_leakage: DLG and iDLG against each defense at each configured strength, one after another."""

import torch

from analysis.edge.stages import leakage_stages
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    outputs = zip(snakemake.output.json, snakemake.output.snapshots, strict=True)
    leakage_stages(snakemake.params.edge, snakemake.params.seed,
                   dict(zip(snakemake.params.defenses, outputs, strict=True)))
