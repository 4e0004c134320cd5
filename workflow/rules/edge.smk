# Vision edge-training stages: a small inverted-residual net pretrained on a source task, TinyTL's
# transfer modes, and sparse back-propagation (contribution analysis + evolutionary search under
# memory budgets). Logic in analysis/edge/; tables and figures in analysis/tables/edge.py.


rule edge:
    input:
        edge_targets(),


rule edge_pretrain:
    output:
        net=f"{RESULTS}/edge/source/net.pt",
        metrics=f"{RESULTS}/edge/source/metrics.json",
    log:
        f"{LOGS}/edge/pretrain.log",
    benchmark:
        f"{RESULTS}/benchmarks/edge/pretrain.tsv"
    conda:
        "../../envs/adaptation.yaml"
    threads: EDGE["threads"]
    resources:
        mem_mb=4000,
        runtime=grows(60),
    params:
        edge=edge_params("source", "net", "pretrain"),
        seed=config["seed"],
    script:
        "../scripts/edge_pretrain.py"


rule edge_transfer:
    input:
        net=rules.edge_pretrain.output.net,
    output:
        json=f"{RESULTS}/edge/transfer/{{edge_mode}}.json",
    log:
        f"{LOGS}/edge/transfer/{{edge_mode}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/edge/transfer/{{edge_mode}}.tsv"
    conda:
        "../../envs/adaptation.yaml"
    threads: EDGE["threads"]
    resources:
        mem_mb=4000,
        runtime=grows(60),
    params:
        edge=edge_params("target", "validation_fraction", "transfer"),
        seed=config["seed"],
    script:
        "../scripts/edge_transfer.py"


rule edge_contributions:
    input:
        net=rules.edge_pretrain.output.net,
    output:
        json=f"{RESULTS}/edge/sparse/contributions.json",
    log:
        f"{LOGS}/edge/contributions.log",
    benchmark:
        f"{RESULTS}/benchmarks/edge/contributions.tsv"
    conda:
        "../../envs/adaptation.yaml"
    threads: EDGE["threads"]
    resources:
        mem_mb=4000,
        runtime=grows(120),
    params:
        edge=edge_params("target", "validation_fraction", "transfer", "sparse"),
        seed=config["seed"],
    script:
        "../scripts/edge_contributions.py"


rule edge_sparse:
    input:
        net=rules.edge_pretrain.output.net,
        contributions=rules.edge_contributions.output.json,
    output:
        json=f"{RESULTS}/edge/sparse/budget_{{budget}}.json",
    log:
        f"{LOGS}/edge/sparse/budget_{{budget}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/edge/sparse/budget_{{budget}}.tsv"
    conda:
        "../../envs/adaptation.yaml"
    threads: EDGE["threads"]
    resources:
        mem_mb=4000,
        runtime=grows(60),
    params:
        edge=edge_params("target", "validation_fraction", "transfer", "sparse"),
        seed=config["seed"],
    script:
        "../scripts/edge_sparse.py"


rule edge_tables:
    input:
        pretrain=rules.edge_pretrain.output.metrics,
        transfers=expand(
            f"{RESULTS}/edge/transfer/{{edge_mode}}.json", edge_mode=EDGE_MODES
        ),
        contributions=rules.edge_contributions.output.json,
        sparse=expand(
            f"{RESULTS}/edge/sparse/budget_{{budget}}.json", budget=EDGE_BUDGETS
        ),
    output:
        transfer=report(
            f"{RESULTS}/edge/tables/transfer.tsv",
            caption="../report/edge_transfer_table.rst",
            category="Edge training",
        ),
        transfer_md=f"{RESULTS}/edge/tables/transfer.md",
        layers=report(
            f"{RESULTS}/edge/tables/memory_layers.tsv",
            caption="../report/edge_memory_layers_table.rst",
            category="Edge training",
        ),
        layers_md=f"{RESULTS}/edge/tables/memory_layers.md",
        contributions=report(
            f"{RESULTS}/edge/tables/contributions.tsv",
            caption="../report/edge_contributions_table.rst",
            category="Edge training",
        ),
        contributions_md=f"{RESULTS}/edge/tables/contributions.md",
        transfer_figure=report(
            f"{RESULTS}/edge/figures/transfer_memory.png",
            caption="../report/edge_transfer_figure.rst",
            category="Edge training",
        ),
        contributions_figure=report(
            f"{RESULTS}/edge/figures/contributions.png",
            caption="../report/edge_contributions_figure.rst",
            category="Edge training",
        ),
        sparse_figure=report(
            f"{RESULTS}/edge/figures/sparse.png",
            caption="../report/edge_sparse_figure.rst",
            category="Edge training",
        ),
    log:
        f"{LOGS}/edge/tables.log",
    conda:
        "../../envs/adaptation.yaml"
    script:
        "../scripts/edge_tables.py"
