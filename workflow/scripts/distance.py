"""Rule distance: MMD and Fréchet distance between one corpus (its saved statistics) and one domain."""

from analysis.runner import rule_log
from analysis.similarity.compare import compare

with rule_log(snakemake.log[0]):
    compare(
        corpus=snakemake.wildcards.corpus,
        domain=snakemake.wildcards.domain,
        portion=snakemake.params.portion,
        corpus_statistics=snakemake.input.statistics,
        corpus_statistics_metadata=snakemake.input.statistics_metadata,
        corpus_metadata=snakemake.input.corpus_metadata,
        domain_embeddings=snakemake.input.domain,
        domain_metadata=snakemake.input.domain_metadata,
        output=snakemake.output[0],
        resamples=snakemake.params.resamples,
        blocks=snakemake.params.blocks,
        confidence=snakemake.params.confidence,
        chunk_rows=snakemake.params.chunk_rows,
        base_seed=snakemake.params.seed,
        extrapolation=snakemake.params.extrapolation,
    )
