"""Rule tokenize_domain: token files of a domain's train, valid and test splits for one model."""

from analysis.lm.data import tokenize_domain
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    tokenize_domain(
        model_name=snakemake.params.name_or_path,
        m2d2_root=snakemake.params.root,
        domain=snakemake.wildcards.domain,
        policy=snakemake.wildcards.train_policy,
        output=snakemake.output.tokens,
        metadata=snakemake.output.metadata,
        max_invalid_fraction=snakemake.params.max_invalid_fraction,
        threads=snakemake.threads,
    )
