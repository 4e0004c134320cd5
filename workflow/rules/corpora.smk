# Corpora: the embedded demo corpus, and seeded samples of source corpora and M2D2 domains.


include: "corpora_specs.smk"


if DEMO["enabled"]:

    rule demo_corpus:
        output:
            sources=DEMO_OUTPUTS["sources"],
            splits=DEMO_OUTPUTS["splits"],
            archives=DEMO_OUTPUTS["archives"],
        log:
            f"{LOGS}/demo_corpus.log",
        # pretrain_base, the longest job and every language-model job's input, waits for it: before
        # the independent edge jobs (they started first without it, delaying the demo by ~160 s).
        priority: 50
        conda:
            "../../envs/corpora.yaml"
        params:
            root=lambda wildcards, output: Path(output.sources[0]).parent.parent,
            seed=config["seed"],
            source_documents=DEMO["source_documents"],
            domain_documents=DEMO["domain_documents"],
            archived_domains=DEMO["archived_domains"],
        script:
            "../scripts/demo_corpus.py"


rule sample_source:
    input:
        source_inputs,
    output:
        parquet=f"{RESULTS}/samples/sources/{{corpus}}.parquet",
        provenance=f"{RESULTS}/samples/sources/{{corpus}}.json",
    log:
        f"{LOGS}/sample_source/{{corpus}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_source/{{corpus}}.tsv"
    conda:
        "../../envs/corpora.yaml"
    resources:
        # The reservoir holds the sample itself: raise this for 1M texts of long documents.
        mem_mb=16000,
        runtime=grows(240),
    params:
        spec=lambda wildcards: config["corpora"][wildcards.corpus],
        seed=config["seed"],
    script:
        "../scripts/sample_source.py"


rule sample_domain:
    input:
        domain_inputs,
    output:
        parquet=f"{RESULTS}/samples/domains/{{domain}}.parquet",
        provenance=f"{RESULTS}/samples/domains/{{domain}}.json",
    log:
        f"{LOGS}/sample_domain/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_domain/{{domain}}.tsv"
    conda:
        "../../envs/corpora.yaml"
    resources:
        # Memory follows the sample (two streamed passes), runtime the domain's text.
        mem_mb=lambda wildcards, input: resources_lib.sample_domain_mem_mb(
            domain_text_bytes(input),
            config["sampling"]["domain_fraction"],
            config["sampling"]["domain_max_texts"],
            config["sampling"]["domain_min_texts"],
        ),
        runtime=lambda wildcards, input, attempt: attempt
        * resources_lib.sample_domain_runtime(domain_text_bytes(input)),
    params:
        root=config["m2d2"]["root"],
        splits=config["sampling"]["domain_splits"],
        document_policy=config["m2d2"]["document_policy"],
        max_invalid_fraction=config["m2d2"]["max_invalid_line_fraction"],
        sampling=config["sampling"],
        portions=config["domains"]["portions"],
        seed=config["seed"],
    script:
        "../scripts/sample_domain.py"
