"""Rule sample_source: a seeded uniform sample of one source corpus."""

from analysis.corpora.sampling import sample_source
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    sample_source(
        name=snakemake.wildcards.corpus,
        spec=snakemake.params.spec,
        base_seed=snakemake.params.seed,
        output=snakemake.output.parquet,
        provenance=snakemake.output.provenance,
    )
