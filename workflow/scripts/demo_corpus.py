"""Rule demo_corpus: write the embedded offline demo corpus."""

from analysis.corpora.demo import generate
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    generate(
        snakemake.params.root,
        seed=snakemake.params.seed,
        source_documents=snakemake.params.source_documents,
        domain_documents=snakemake.params.domain_documents,
        archived_domains=snakemake.params.archived_domains,
    )
