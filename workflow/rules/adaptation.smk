# Adaptation: the demo base model, tokenised domains, one-epoch DeepSpeed adaptation per mode.


include: "adaptation_specs.smk"


rule pretrain_base:
    input:
        lambda wildcards: corpus_files(config["models"][wildcards.model]["corpus"]),
    output:
        model=directory(f"{RESULTS}/models/{{model}}/hf"),
        metrics=f"{RESULTS}/models/{{model}}/metrics.json",
    log:
        f"{LOGS}/pretrain_base/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_base/{{model}}.tsv"
    wildcard_constraints:
        model=_alternatives(PRETRAINED) if PRETRAINED else "(?!)",
    # Every language-model job waits for it: start it before the similarity jobs.
    priority: 50
    conda:
        "../../envs/adaptation.yaml"
    threads: ADAPTATION["threads"]
    resources:
        mem_mb=8000,
        runtime=grows(120),
    params:
        corpus_spec=lambda wildcards: config["corpora"][
            config["models"][wildcards.model]["corpus"]
        ],
        shape=lambda wildcards: config["models"][wildcards.model]["pretrain"],
        context_length=lambda wildcards: config["models"][wildcards.model][
            "context_length"
        ],
        checkpoint_dir=lambda wildcards: f"{ADAPTATION['checkpoint_root']}/pretrain_base/{wildcards.model}",
        seed=config["seed"],
    script:
        "../scripts/pretrain_base.py"


rule convert_gguf:
    input:
        gguf=lambda wildcards: gguf_file(wildcards.model),
    output:
        model=directory(f"{RESULTS}/models/{{model}}/hf"),
        # The source file's sha256 and size, its tensor types, the saved dtype, library versions.
        provenance=f"{RESULTS}/models/{{model}}/gguf.json",
    log:
        f"{LOGS}/convert_gguf/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_gguf/{{model}}.tsv"
    wildcard_constraints:
        model=_alternatives(CONVERTED) if CONVERTED else "(?!)",
    # Every language-model job of the model waits for it.
    priority: 50
    conda:
        "../../envs/adaptation.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, input: resources_lib.convert_gguf_mem_mb(input.gguf),
        runtime=grows(30),
    params:
        dtype=lambda wildcards: gguf_dtype(wildcards.model),
    script:
        "../scripts/convert_gguf.py"


rule tokenize_domain:
    input:
        model=model_inputs,
        splits=lambda wildcards: domain_files(
            wildcards.domain, ["train", "valid", "test"]
        ),
    output:
        # Flat token streams, their document offsets, and what they hold (analysis/lm/tokens.py).
        **token_files("{model}", "{train_policy}", "{domain}"),
    log:
        f"{LOGS}/tokenize_domain/{{model}}/{{train_policy}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tokenize_domain/{{model}}/{{train_policy}}/{{domain}}.tsv"
    conda:
        "../../envs/adaptation.yaml"
    threads: ADAPTATION["tokenize_threads"]
    resources:
        mem_mb=lambda wildcards, input, threads: resources_lib.tokenize_domain_mem_mb(
            threads
        ),
        runtime=lambda wildcards, input, threads, attempt: attempt
        * resources_lib.tokenize_domain_runtime(
            domain_text_bytes(input.splits), threads
        ),
    params:
        name_or_path=lambda wildcards: config["models"][wildcards.model]["name_or_path"],
        root=config["m2d2"]["root"],
        max_invalid_fraction=config["m2d2"]["max_invalid_line_fraction"],
    script:
        "../scripts/tokenize_domain.py"


rule plan:
    input:
        model=model_inputs,
    output:
        # The model's memory plan: every ZeRO / offload / checkpointing setting, the configured
        # one, the cheapest that fits (analysis/lm/plan.py). The adapt jobs' resources come from it.
        json=f"{RESULTS}/plan/{{model}}.json",
        table=f"{RESULTS}/plan/{{model}}.md",
    log:
        f"{LOGS}/plan/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/plan/{{model}}.tsv"
    # Before every adapt job of the model; a setting that does not fit stops here.
    priority: 40
    conda:
        "../../envs/adaptation.yaml"
    threads: ADAPTATION["threads"]
    resources:
        # Two blocks of the model at full width are built and run forward (7B: ~1 GB in bf16).
        mem_mb=16000,
        runtime=60,
    params:
        model=lambda wildcards: config["models"][wildcards.model],
        plan=ADAPTATION["plan"],
        gpus=ADAPTATION["gpus"],
        modes=MODES,
    script:
        "../scripts/plan.py"


rule adapt:
    input:
        **token_files("{model}", "{train_policy}", "{domain}"),
        model=model_inputs,
        # ancient: a new plan (e.g. a changed GPU size) changes resources, not the trained weights.
        plan=ancient(f"{RESULTS}/plan/{{model}}.json"),
    output:
        weights=directory(
            f"{RESULTS}/adapted/{{model}}/{{train_policy}}/{{mode}}/{{domain}}/weights"
        ),
        metrics=f"{RESULTS}/adapted/{{model}}/{{train_policy}}/{{mode}}/{{domain}}/metrics.json",
        memory=f"{RESULTS}/adapted/{{model}}/{{train_policy}}/{{mode}}/{{domain}}/memory.json",
        curves=f"{RESULTS}/adapted/{{model}}/{{train_policy}}/{{mode}}/{{domain}}/curves.tsv",
        figure=f"{RESULTS}/adapted/{{model}}/{{train_policy}}/{{mode}}/{{domain}}/curves.png",
        deepspeed_config=f"{RESULTS}/adapted/{{model}}/{{train_policy}}/{{mode}}/{{domain}}/deepspeed_config.json",
        scheme=f"{RESULTS}/adapted/{{model}}/{{train_policy}}/{{mode}}/{{domain}}/scheme.json",
    log:
        f"{LOGS}/adapt/{{model}}/{{train_policy}}/{{mode}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/adapt/{{model}}/{{train_policy}}/{{mode}}/{{domain}}.tsv"
    retries: ADAPTATION["retries"]
    conda:
        "../../envs/adaptation.yaml"
    threads: ADAPTATION["threads"]
    resources:
        mem_mb=lambda wildcards, input: resources_lib.adapt_resource(
            config, wildcards, input, "mem_mb"
        ),
        runtime=lambda wildcards, input, attempt: resources_lib.adapt_resource(
            config, wildcards, input, "runtime", attempt
        ),
        disk_mb=lambda wildcards, input: resources_lib.adapt_resource(
            config, wildcards, input, "disk_mb"
        ),
        gpu=model_resource("adapt", "gpus"),
    params:
        launcher=lambda wildcards, resources: launcher(resources.gpu),
        spec=lambda wildcards, output, threads: adapt_spec(wildcards, output, threads),
    shell:
        "{params.launcher} {params.spec}"
