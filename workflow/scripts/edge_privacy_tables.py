"""Rule edge_privacy_tables: federated accuracy per round, attack success against defenses, figures."""

from pathlib import Path

from analysis.runner import rule_log
from analysis.tables.edge_privacy import privacy_tables

with rule_log(snakemake.log[0]):
    privacy_tables(snakemake.input.federated, snakemake.input.leakage, snakemake.input.snapshots,
                   Path(snakemake.output.federated).parent, Path(snakemake.output.federated_figure).parent)
