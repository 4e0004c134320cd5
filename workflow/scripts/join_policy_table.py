"""Rule join_policy_table: the join-policy ablation table and one figure per model."""

from analysis.lm.models import token_decoder
from analysis.runner import rule_log
from analysis.tables.join_policy import join_policy_table

with rule_log(snakemake.log[0]):
    join_policy_table(
        snakemake.params.runs, snakemake.params.mode,
        {model: token_decoder(path) for model, path in snakemake.params.tokenizers.items()},
        snakemake.output.tsv, snakemake.output.markdown, snakemake.output.figures, list(snakemake.params.tokenizers),
    )
