"""Rule correlation_table: perplexity change against MMD and FD, per model, mode and corpus."""

from analysis.runner import rule_log
from analysis.tables.perplexity import correlation_table

with rule_log(snakemake.log[0]):
    correlation_table(snakemake.input.perplexity, list(snakemake.input.distances),
                      snakemake.params.pretraining_corpora, snakemake.output.tsv, snakemake.output.markdown,
                      snakemake.output.distances)
