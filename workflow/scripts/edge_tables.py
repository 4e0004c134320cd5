"""Rule edge_tables: transfer, per-layer memory and contribution tables; the three edge figures."""

from pathlib import Path

from analysis.runner import rule_log
from analysis.tables.edge import edge_tables

with rule_log(snakemake.log[0]):
    edge_tables(snakemake.input.pretrain, snakemake.input.transfers, snakemake.input.contributions,
                snakemake.input.sparse, Path(snakemake.output.transfer).parent,
                Path(snakemake.output.transfer_figure).parent)
