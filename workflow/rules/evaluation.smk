# Evaluation: perplexity before (zero_shot) and after adaptation (evaluate), token-level NLL,
# and the tables and figures that compare them.


include: "evaluation_specs.smk"


rule zero_shot:
    input:
        **token_files("{model}", EVAL_POLICY, "{domain}"),
        model=model_inputs,
    output:
        json=f"{RESULTS}/eval/{{model}}/zero_shot/{{domain}}.json",
        npz=f"{RESULTS}/eval/{{model}}/zero_shot/{{domain}}.npz",
    log:
        f"{LOGS}/zero_shot/{{model}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/zero_shot/{{model}}/{{domain}}.tsv"
    conda:
        "../../envs/adaptation.yaml"
    threads: EVALUATION["threads"]
    resources:
        mem_mb=model_resource("evaluate", "mem_mb"),
        runtime=model_resource("evaluate", "runtime"),
        gpu=model_resource("evaluate", "gpus"),
    params:
        spec=evaluation_spec,
    script:
        "../scripts/evaluate.py"


rule evaluate:
    input:
        **token_files("{model}", EVAL_POLICY, "{domain}"),
        model=model_inputs,
        weights=f"{RESULTS}/adapted/{{model}}/{{train_policy}}/{{mode}}/{{domain}}/weights",
        adapted=f"{RESULTS}/adapted/{{model}}/{{train_policy}}/{{mode}}/{{domain}}/metrics.json",
    output:
        json=f"{RESULTS}/eval/{{model}}/{{train_policy}}/{{mode}}/{{domain}}.json",
        npz=f"{RESULTS}/eval/{{model}}/{{train_policy}}/{{mode}}/{{domain}}.npz",
    log:
        f"{LOGS}/evaluate/{{model}}/{{train_policy}}/{{mode}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{model}}/{{train_policy}}/{{mode}}/{{domain}}.tsv"
    conda:
        "../../envs/adaptation.yaml"
    threads: EVALUATION["threads"]
    resources:
        mem_mb=model_resource("evaluate", "mem_mb"),
        runtime=model_resource("evaluate", "runtime"),
        gpu=model_resource("evaluate", "gpus"),
    params:
        spec=evaluation_spec,
    script:
        "../scripts/evaluate.py"


rule perplexity_table:
    input:
        zero_shot=expand(
            f"{RESULTS}/eval/{{model}}/zero_shot/{{domain}}.json",
            model=MODELS,
            domain=ADAPTATION_DOMAINS,
        ),
        adapted=adapted_paths(
            f"{RESULTS}/eval/{{model}}/{{train_policy}}/{{mode}}/{{domain}}.json"
        ),
    output:
        tsv=report(
            f"{RESULTS}/tables/perplexity.tsv",
            caption="../report/perplexity_table.rst",
            category="Perplexity",
        ),
        markdown=f"{RESULTS}/tables/perplexity.md",
    log:
        f"{LOGS}/perplexity_table.log",
    conda:
        "../../envs/adaptation.yaml"
    script:
        "../scripts/perplexity_table.py"


rule correlation_table:
    input:
        perplexity=f"{RESULTS}/tables/perplexity.tsv",
        distances=expand(
            f"{RESULTS}/similarity/{{corpus}}/{{domain}}.json",
            corpus=CORPORA,
            domain=ADAPTATION_DOMAINS,
        ),
    output:
        tsv=report(
            f"{RESULTS}/tables/correlation.tsv",
            caption="../report/correlation_table.rst",
            category="Perplexity",
        ),
        markdown=f"{RESULTS}/tables/correlation.md",
        distances=f"{RESULTS}/tables/adaptation_distances.tsv",
    log:
        f"{LOGS}/correlation_table.log",
    conda:
        "../../envs/adaptation.yaml"
    params:
        pretraining_corpora={
            name: spec["corpus"] for name, spec in config["models"].items()
        },
    script:
        "../scripts/correlation_table.py"


rule perplexity_figure:
    input:
        perplexity=f"{RESULTS}/tables/perplexity.tsv",
        distances=f"{RESULTS}/tables/adaptation_distances.tsv",
    output:
        report(
            f"{RESULTS}/figures/perplexity_change_{{model}}_{{mode}}.png",
            caption="../report/perplexity_figure.rst",
            category="Perplexity",
            subcategory="{model}",
        ),
    log:
        f"{LOGS}/perplexity_figure/{{model}}_{{mode}}.log",
    conda:
        "../../envs/adaptation.yaml"
    params:
        corpus=lambda wildcards: config["models"][wildcards.model]["corpus"],
        train_policy=TRAIN_POLICY,
        estimator=config["similarity"]["estimator"],
    script:
        "../scripts/perplexity_figure.py"


rule token_tables:
    input:
        model=model_inputs,
        zero_shot=lambda wildcards: expand(
            f"{RESULTS}/eval/{wildcards.model}/zero_shot/{{domain}}.npz",
            domain=ADAPTATION_DOMAINS,
        ),
        adapted=lambda wildcards: expand(
            f"{RESULTS}/eval/{wildcards.model}/{TRAIN_POLICY}/{wildcards.mode}/{{domain}}.npz",
            domain=ADAPTATION_DOMAINS,
        ),
    output:
        tables=report(
            expand(
                f"{RESULTS}/tables/tokens/{{{{model}}}}/{{{{mode}}}}/{{domain}}.tsv",
                domain=ADAPTATION_DOMAINS,
            ),
            caption="../report/token_table.rst",
            category="Tokens",
            subcategory="{model} {mode}",
        ),
        summary=f"{RESULTS}/tables/tokens/{{model}}/{{mode}}/summary.tsv",
        markdown=f"{RESULTS}/tables/tokens/{{model}}/{{mode}}/summary.md",
        figure=report(
            f"{RESULTS}/figures/tokens_{{model}}_{{mode}}.png",
            caption="../report/token_figure.rst",
            category="Tokens",
            subcategory="{model} {mode}",
        ),
    log:
        f"{LOGS}/token_tables/{{model}}_{{mode}}.log",
    conda:
        "../../envs/adaptation.yaml"
    params:
        tokenizer=lambda wildcards: config["models"][wildcards.model]["name_or_path"],
        domains=ADAPTATION_DOMAINS,
        portions=lambda wildcards: {
            d: config_lib.domain_portion(config, d) for d in ADAPTATION_DOMAINS
        },
        top_k=EVALUATION["token_level"]["top_k"],
    script:
        "../scripts/token_tables.py"


rule curves_figure:
    input:
        lambda wildcards: expand(
            f"{RESULTS}/adapted/{wildcards.model}/{TRAIN_POLICY}/{wildcards.mode}/{{domain}}/curves.tsv",
            domain=ADAPTATION_DOMAINS,
        ),
    output:
        report(
            f"{RESULTS}/figures/curves_{{model}}_{{mode}}.png",
            caption="../report/curves_figure.rst",
            category="Training",
        ),
    log:
        f"{LOGS}/curves_figure/{{model}}_{{mode}}.log",
    conda:
        "../../envs/adaptation.yaml"
    params:
        domains=ADAPTATION_DOMAINS,
    script:
        "../scripts/curves_figure.py"


rule join_policy_table:
    input:
        zero_shot=sorted(
            {
                f"{run['zero_shot']}.{ext}"
                for run in join_policy_runs()
                for ext in ("json", "npz")
            }
        ),
        adapted=[
            f"{run['adapted']}.{ext}"
            for run in join_policy_runs()
            for ext in ("json", "npz")
        ],
    output:
        tsv=report(
            f"{RESULTS}/tables/join_policy.tsv",
            caption="../report/join_policy_table.rst",
            category="Join policy",
        ),
        markdown=f"{RESULTS}/tables/join_policy.md",
        figures=report(
            expand(
                f"{RESULTS}/figures/join_policy_{{model}}.png",
                model=ABLATION["models"],
            ),
            caption="../report/join_policy_figure.rst",
            category="Join policy",
        ),
    log:
        f"{LOGS}/join_policy_table.log",
    conda:
        "../../envs/adaptation.yaml"
    params:
        runs=join_policy_runs(),
        mode=ABLATION["mode"],
        tokenizers={m: config["models"][m]["name_or_path"] for m in ABLATION["models"]},
    script:
        "../scripts/join_policy_table.py"
