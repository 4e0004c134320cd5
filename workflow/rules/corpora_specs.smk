# What the corpora rules (corpora.smk) pass to their scripts and read: their inputs, params
# and targets, kept beside them (functions only: `snakemake --lint` wants rules and functions apart).


def domain_inputs(wildcards):
    """The split files (or the archive) a domain sample reads."""
    return domain_files(wildcards.domain, config["sampling"]["domain_splits"])


def source_inputs(wildcards):
    """The local files a source-corpus sample reads (none for a hub dataset or a remote path)."""
    return corpus_files(wildcards.corpus)
