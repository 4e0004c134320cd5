# Vision edge-training stages: a small inverted-residual net pretrained on a source task, TinyTL's
# transfer modes, sparse back-propagation (contribution analysis + evolutionary search under memory
# budgets), federated averaging, gradient leakage (DLG / iDLG) against its defenses, and
# compression (pruning, quantization, distillation). Logic in analysis/edge/; tables and figures
# in analysis/tables/edge.py, edge_privacy.py and edge_compression.py.


include: "edge_specs.smk"


rule edge_pretrain:
    output:
        net=f"{RESULTS}/edge/source/net.pt",
        metrics=f"{RESULTS}/edge/source/metrics.json",
    log:
        f"{LOGS}/edge/pretrain.log",
    benchmark:
        f"{RESULTS}/benchmarks/edge/pretrain.tsv"
    # Heads the edge stages' longest chain (contributions, then sparse): started late, that chain
    # ran alone at the end of the demo while the other core idled.
    priority: 30
    conda:
        "../../envs/edge.yaml"
    threads: EDGE["threads"]
    resources:
        mem_mb=4000,
        runtime=grows(60),
    params:
        edge=edge_params("source", "net", "pretrain"),
        seed=config["seed"],
    script:
        "../scripts/edge_pretrain.py"


# One job for every TinyTL mode (and below: every defense, every compression method): the list is in
# the job's params, so a change to it reran them all anyway, and each job of its own spent about half
# its time starting Python and importing torch (benchmarks/demo_profile.py).
rule edge_transfer:
    input:
        net=rules.edge_pretrain.output.net,
    output:
        json=expand(f"{RESULTS}/edge/transfer/{{edge_mode}}.json", edge_mode=EDGE_MODES),
    log:
        f"{LOGS}/edge/transfer.log",
    benchmark:
        f"{RESULTS}/benchmarks/edge/transfer.tsv"
    # The long edge jobs before the many short language-model jobs, which then fill both cores to the end.
    priority: 20
    conda:
        "../../envs/edge.yaml"
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
    # The longest edge job on that chain (about 50 s in the demo).
    priority: 30
    conda:
        "../../envs/edge.yaml"
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
        "../../envs/edge.yaml"
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
        transfers=rules.edge_transfer.output.json,
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
        "../../envs/edge.yaml"
    script:
        "../scripts/edge_tables.py"


rule edge_federated:
    output:
        json=f"{RESULTS}/edge/federated/{{partition}}.json",
    log:
        f"{LOGS}/edge/federated/{{partition}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/edge/federated/{{partition}}.tsv"
    conda:
        "../../envs/edge.yaml"
    threads: EDGE["federated"]["threads"]
    resources:
        mem_mb=8000,
        runtime=grows(60),
    params:
        edge=edge_params("federated"),
        seed=config["seed"],
    script:
        "../scripts/edge_federated.py"


rule edge_leakage:
    output:
        json=expand(f"{RESULTS}/edge/leakage/{{defense}}.json", defense=EDGE_DEFENSES),
        snapshots=expand(
            f"{RESULTS}/edge/leakage/{{defense}}.npz", defense=EDGE_DEFENSES
        ),
    log:
        f"{LOGS}/edge/leakage.log",
    benchmark:
        f"{RESULTS}/benchmarks/edge/leakage.tsv"
    # As edge_transfer.
    priority: 20
    conda:
        "../../envs/edge.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=grows(240),
    params:
        edge=edge_params("leakage"),
        defenses=EDGE_DEFENSES,
        seed=config["seed"],
    script:
        "../scripts/edge_leakage.py"


rule edge_privacy_tables:
    input:
        federated=expand(
            f"{RESULTS}/edge/federated/{{partition}}.json", partition=EDGE_PARTITIONS
        ),
        leakage=rules.edge_leakage.output.json,
        snapshots=rules.edge_leakage.output.snapshots,
    output:
        federated=report(
            f"{RESULTS}/edge/tables/federated.tsv",
            caption="../report/edge_federated_table.rst",
            category="Edge training",
        ),
        federated_md=f"{RESULTS}/edge/tables/federated.md",
        leakage=report(
            f"{RESULTS}/edge/tables/leakage.tsv",
            caption="../report/edge_leakage_table.rst",
            category="Edge training",
        ),
        leakage_md=f"{RESULTS}/edge/tables/leakage.md",
        federated_figure=report(
            f"{RESULTS}/edge/figures/federated.png",
            caption="../report/edge_federated_figure.rst",
            category="Edge training",
        ),
        reconstructions=report(
            f"{RESULTS}/edge/figures/leakage_reconstructions.png",
            caption="../report/edge_leakage_reconstructions.rst",
            category="Edge training",
        ),
        defenses=report(
            f"{RESULTS}/edge/figures/leakage_defenses.png",
            caption="../report/edge_leakage_defenses.rst",
            category="Edge training",
        ),
    log:
        f"{LOGS}/edge/privacy_tables.log",
    conda:
        "../../envs/edge.yaml"
    script:
        "../scripts/edge_privacy_tables.py"


rule edge_compress:
    input:
        net=rules.edge_pretrain.output.net,
    output:
        json=expand(
            f"{RESULTS}/edge/compression/{{method}}.json", method=EDGE_COMPRESSIONS
        ),
    log:
        f"{LOGS}/edge/compression.log",
    benchmark:
        f"{RESULTS}/benchmarks/edge/compression.tsv"
    # As edge_transfer.
    priority: 20
    conda:
        "../../envs/edge.yaml"
    threads: EDGE["threads"]
    resources:
        mem_mb=4000,
        runtime=grows(90),
    params:
        edge=edge_params("source", "pretrain", "compression"),
        seed=config["seed"],
    script:
        "../scripts/edge_compress.py"


rule edge_compression_tables:
    input:
        pruning=f"{RESULTS}/edge/compression/pruning.json",
        quantization=f"{RESULTS}/edge/compression/quantization.json",
        distillation=f"{RESULTS}/edge/compression/distillation.json",
    output:
        compression=report(
            f"{RESULTS}/edge/tables/compression.tsv",
            caption="../report/edge_compression_table.rst",
            category="Edge training",
        ),
        compression_md=f"{RESULTS}/edge/tables/compression.md",
        sensitivity=report(
            f"{RESULTS}/edge/tables/sensitivity.tsv",
            caption="../report/edge_sensitivity_table.rst",
            category="Edge training",
        ),
        sensitivity_md=f"{RESULTS}/edge/tables/sensitivity.md",
        compression_figure=report(
            f"{RESULTS}/edge/figures/compression.png",
            caption="../report/edge_compression_figure.rst",
            category="Edge training",
        ),
        sensitivity_figure=report(
            f"{RESULTS}/edge/figures/sensitivity.png",
            caption="../report/edge_sensitivity_figure.rst",
            category="Edge training",
        ),
    log:
        f"{LOGS}/edge/compression_tables.log",
    conda:
        "../../envs/edge.yaml"
    script:
        "../scripts/edge_compression_tables.py"


rule edge:
    input:
        edge_targets(),
