"""Rule token_tables: per-token NLL change of one model and mode, per domain and summarised."""

from analysis.lm.models import token_decoder
from analysis.runner import rule_log
from analysis.tables.tokens import token_tables

with rule_log(snakemake.log[0]):
    token_tables(
        model=snakemake.wildcards.model, mode=snakemake.wildcards.mode, domains=snakemake.params.domains,
        portions=snakemake.params.portions, zero_shot=snakemake.input.zero_shot, adapted=snakemake.input.adapted,
        decode=token_decoder(snakemake.params.tokenizer), tables=snakemake.output.tables,
        summary_tsv=snakemake.output.summary, summary_md=snakemake.output.markdown,
        figure=snakemake.output.figure, top_k=snakemake.params.top_k,
    )
