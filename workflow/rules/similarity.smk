# Similarity: SBERT embeddings (each corpus and domain once), each corpus' moments once, MMD and
# Fréchet distance per pair. Resources follow the input sizes (analysis/resources.py).


rule embed:
    input:
        f"{RESULTS}/samples/{{kind}}/{{name}}.parquet",
    output:
        embeddings=f"{RESULTS}/embeddings/{{kind}}/{{name}}.npy",
        metadata=f"{RESULTS}/embeddings/{{kind}}/{{name}}.json",
    log:
        f"{LOGS}/embed/{{kind}}/{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed/{{kind}}/{{name}}.tsv"
    conda:
        "../../envs/similarity.yaml"
    threads: SIMILARITY["threads"]
    resources:
        mem_mb=lambda wildcards, input: resources_lib.embed_mem(
            config, wildcards, input
        ),
        runtime=lambda wildcards, input, threads, attempt: resources_lib.embed_runtime(
            config, wildcards, input, threads, attempt
        ),
        gpu=SIMILARITY["gpus"],
    params:
        model=SIMILARITY["model"],
        max_seq_length=SIMILARITY["max_seq_length"],
        tokens_per_batch=SIMILARITY["tokens_per_batch"],
        unit_texts=SIMILARITY["unit_texts"],
        device=SIMILARITY["device"],
        dtype=SIMILARITY["dtype"],
    script:
        "../scripts/embed.py"


rule corpus_statistics:
    input:
        embeddings=f"{RESULTS}/embeddings/sources/{{corpus}}.npy",
        metadata=f"{RESULTS}/embeddings/sources/{{corpus}}.json",
    output:
        statistics=f"{RESULTS}/statistics/sources/{{corpus}}.npz",
        metadata=f"{RESULTS}/statistics/sources/{{corpus}}.json",
    log:
        f"{LOGS}/corpus_statistics/{{corpus}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/corpus_statistics/{{corpus}}.tsv"
    # Every distance job of the corpus waits for it.
    priority: 10
    conda:
        "../../envs/similarity.yaml"
    resources:
        mem_mb=lambda wildcards, input: resources_lib.statistics_mem(
            config, wildcards, input
        ),
        runtime=lambda wildcards, input, attempt: resources_lib.statistics_runtime(
            config, wildcards, input, attempt
        ),
    params:
        blocks=SIMILARITY["blocks"],
        chunk_rows=SIMILARITY["chunk_rows"],
        seed=config["seed"],
    script:
        "../scripts/corpus_statistics.py"


rule distance:
    input:
        statistics=f"{RESULTS}/statistics/sources/{{corpus}}.npz",
        statistics_metadata=f"{RESULTS}/statistics/sources/{{corpus}}.json",
        corpus_metadata=f"{RESULTS}/embeddings/sources/{{corpus}}.json",
        domain=f"{RESULTS}/embeddings/domains/{{domain}}.npy",
        domain_metadata=f"{RESULTS}/embeddings/domains/{{domain}}.json",
    output:
        f"{RESULTS}/similarity/{{corpus}}/{{domain}}.json",
    log:
        f"{LOGS}/distance/{{corpus}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/distance/{{corpus}}/{{domain}}.tsv"
    conda:
        "../../envs/similarity.yaml"
    resources:
        mem_mb=lambda wildcards, input: resources_lib.distance_mem(
            config, wildcards, input
        ),
        runtime=lambda wildcards, input, attempt: resources_lib.distance_runtime(
            config, wildcards, input, attempt
        ),
    params:
        portion=lambda wildcards: config_lib.domain_portion(config, wildcards.domain),
        resamples=SIMILARITY["resamples"],
        blocks=SIMILARITY["blocks"],
        confidence=SIMILARITY["confidence"],
        extrapolation=SIMILARITY["fd_extrapolation"],
        chunk_rows=SIMILARITY["chunk_rows"],
        seed=config["seed"],
    script:
        "../scripts/distance.py"


rule similarity_table:
    input:
        expand(
            f"{RESULTS}/similarity/{{corpus}}/{{domain}}.json",
            corpus=CORPORA,
            domain=SIMILARITY_DOMAINS,
        ),
    output:
        tsv=report(
            f"{RESULTS}/tables/similarity.tsv",
            caption="../report/similarity_table.rst",
            category="Similarity",
        ),
        markdown=f"{RESULTS}/tables/similarity.md",
    log:
        f"{LOGS}/similarity_table.log",
    conda:
        "../../envs/similarity.yaml"
    script:
        "../scripts/similarity_table.py"


rule similarity_figure:
    input:
        f"{RESULTS}/tables/similarity.tsv",
    output:
        report(
            f"{RESULTS}/figures/similarity_{{corpus}}.png",
            caption="../report/similarity_figure.rst",
            category="Similarity",
        ),
    log:
        f"{LOGS}/similarity_figure/{{corpus}}.log",
    conda:
        "../../envs/similarity.yaml"
    params:
        estimator=SIMILARITY["estimator"],
    script:
        "../scripts/similarity_figure.py"
