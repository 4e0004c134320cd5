"""Rule embed: l2-normalised SBERT embeddings of one sample, unit by unit, resumable."""

from analysis.runner import rule_log
from analysis.similarity.embedding import embed_sample, state_directory

with rule_log(snakemake.log[0]):
    embed_sample(
        parquet=snakemake.input[0],
        output=snakemake.output.embeddings,
        metadata=snakemake.output.metadata,
        model_name=snakemake.params.model,
        max_seq_length=snakemake.params.max_seq_length,
        tokens_per_batch=snakemake.params.tokens_per_batch,
        unit_texts=snakemake.params.unit_texts,
        device=snakemake.params.device,
        dtype=snakemake.params.dtype,
        threads=snakemake.threads,
        # Not a param: moving the checkpoints must not re-embed every sample.
        state_dir=state_directory(
            snakemake.config["adaptation"]["checkpoint_root"],
            snakemake.wildcards.kind,
            snakemake.wildcards.name,
        ),
    )
