"""Rule curves_figure: training curves of one model and mode, one panel per domain."""

from analysis.runner import rule_log
from analysis.tables.curves import curves_figure

with rule_log(snakemake.log[0]):
    curves_figure(list(snakemake.input), snakemake.params.domains,
                  f"{snakemake.wildcards.model}, mode {snakemake.wildcards.mode}: loss along the adaptation epoch",
                  snakemake.output[0])
