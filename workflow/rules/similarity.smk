# Similarity: SBERT embeddings (each corpus and domain once), MMD and Fréchet distance per pair.


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
        mem_mb=8000,
        runtime=grows(600),
        gpu=SIMILARITY["gpus"],
    params:
        model=SIMILARITY["model"],
        max_seq_length=SIMILARITY["max_seq_length"],
        tokens_per_batch=SIMILARITY["tokens_per_batch"],
        device=SIMILARITY["device"],
    script:
        "../scripts/embed.py"


rule distance:
    input:
        corpus=f"{RESULTS}/embeddings/sources/{{corpus}}.npy",
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
        mem_mb=4000,
        runtime=60,
    params:
        portion=lambda wildcards: config_lib.domain_portion(config, wildcards.domain),
        resamples=SIMILARITY["bootstrap_resamples"],
        blocks=SIMILARITY["bootstrap_blocks"],
        confidence=SIMILARITY["confidence"],
        interval=SIMILARITY["interval"],
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
    script:
        "../scripts/similarity_figure.py"
