"""Rule perplexity_table: zero-shot and adapted perplexity of every (model, mode, domain)."""

from analysis.runner import rule_log
from analysis.tables.perplexity import perplexity_table

with rule_log(snakemake.log[0]):
    perplexity_table(snakemake.input.zero_shot, snakemake.input.adapted, snakemake.output.tsv,
                     snakemake.output.markdown)
