"""Rule corpus_statistics: a source corpus' moments and block statistics, once for all its distances."""

from analysis.runner import rule_log
from analysis.similarity.statistics import corpus_statistics

with rule_log(snakemake.log[0]):
    corpus_statistics(
        corpus=snakemake.wildcards.corpus,
        embeddings=snakemake.input.embeddings,
        embedding_metadata=snakemake.input.metadata,
        output=snakemake.output.statistics,
        metadata=snakemake.output.metadata,
        blocks=snakemake.params.blocks,
        chunk_rows=snakemake.params.chunk_rows,
        base_seed=snakemake.params.seed,
    )
