"""Rule embed: l2-normalised SBERT embeddings of one sample."""

from analysis.runner import rule_log
from analysis.similarity.embedding import embed_sample

with rule_log(snakemake.log[0]):
    embed_sample(
        parquet=snakemake.input[0],
        output=snakemake.output.embeddings,
        metadata=snakemake.output.metadata,
        model_name=snakemake.params.model,
        max_seq_length=snakemake.params.max_seq_length,
        tokens_per_batch=snakemake.params.tokens_per_batch,
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
