"""Rule sample_domain: a seeded sample of one M2D2 domain (the paper's 5% / 50,000 rule)."""

from analysis.corpora.sampling import sample_domain
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    sampling = snakemake.params.sampling
    sample_domain(
        root=snakemake.params.root,
        domain=snakemake.wildcards.domain,
        splits=snakemake.params.splits,
        document_policy=snakemake.params.document_policy,
        fraction=sampling["domain_fraction"],
        max_texts=sampling["domain_max_texts"],
        min_texts=sampling["domain_min_texts"],
        base_seed=snakemake.params.seed,
        max_invalid_fraction=snakemake.params.max_invalid_fraction,
        output=snakemake.output.parquet,
        provenance=snakemake.output.provenance,
        portion_overrides=snakemake.params.portions,
    )
