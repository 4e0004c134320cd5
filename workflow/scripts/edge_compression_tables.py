"""Rule edge_compression_tables: accuracy against size, sparsity and bits; the sensitivity scan."""

from pathlib import Path

from analysis.runner import rule_log
from analysis.tables.edge_compression import compression_tables

with rule_log(snakemake.log[0]):
    compression_tables(snakemake.input.pruning, snakemake.input.quantization, snakemake.input.distillation,
                       Path(snakemake.output.compression).parent, Path(snakemake.output.compression_figure).parent)
