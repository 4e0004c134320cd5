"""Rule similarity_table: every corpus x domain distance in one TSV and Markdown table."""

from analysis.runner import rule_log
from analysis.tables.similarity import similarity_table

with rule_log(snakemake.log[0]):
    similarity_table(list(snakemake.input), snakemake.output.tsv, snakemake.output.markdown)
