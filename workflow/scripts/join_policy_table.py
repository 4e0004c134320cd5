"""Rule join_policy_table: the join-policy ablation table and one figure per model."""

from analysis.lm.models import load_tokenizer
from analysis.runner import rule_log
from analysis.tables.join_policy import join_policy_table

with rule_log(snakemake.log[0]):
    tokenizers = {model: load_tokenizer(path) for model, path in snakemake.params.tokenizers.items()}
    join_policy_table(
        snakemake.params.runs, snakemake.params.mode,
        {model: (lambda token_id, t=t: t.decode([token_id])) for model, t in tokenizers.items()},
        snakemake.output.tsv, snakemake.output.markdown, snakemake.output.figures, list(snakemake.params.tokenizers),
    )
