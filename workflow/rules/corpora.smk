# Corpora: the embedded demo corpus, and seeded samples of source corpora and M2D2 domains.


if DEMO["enabled"]:

    rule demo_corpus:
        output:
            sources=DEMO_OUTPUTS["sources"],
            splits=DEMO_OUTPUTS["splits"],
            archives=DEMO_OUTPUTS["archives"],
        params:
            root=DEMO["root"],
            seed=config["seed"],
            source_documents=DEMO["source_documents"],
            domain_documents=DEMO["domain_documents"],
            archived_domains=DEMO["archived_domains"],
        log:
            f"{LOGS}/demo_corpus.log",
        conda:
            "../../envs/corpora.yaml"
        script:
            "../scripts/demo_corpus.py"


rule sample_source:
    input:
        source_inputs,
    output:
        parquet=f"{RESULTS}/samples/sources/{{corpus}}.parquet",
        provenance=f"{RESULTS}/samples/sources/{{corpus}}.json",
    params:
        spec=lambda wildcards: config["corpora"][wildcards.corpus],
        seed=config["seed"],
    log:
        f"{LOGS}/sample_source/{{corpus}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_source/{{corpus}}.tsv"
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../../envs/corpora.yaml"
    script:
        "../scripts/sample_source.py"


rule sample_domain:
    input:
        domain_inputs,
    output:
        parquet=f"{RESULTS}/samples/domains/{{domain}}.parquet",
        provenance=f"{RESULTS}/samples/domains/{{domain}}.json",
    params:
        root=config["m2d2"]["root"],
        splits=config["sampling"]["domain_splits"],
        document_policy=config["m2d2"]["document_policy"],
        max_invalid_fraction=config["m2d2"]["max_invalid_line_fraction"],
        sampling=config["sampling"],
        portions=config["domains"]["portions"],
        seed=config["seed"],
    log:
        f"{LOGS}/sample_domain/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_domain/{{domain}}.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/corpora.yaml"
    script:
        "../scripts/sample_domain.py"
