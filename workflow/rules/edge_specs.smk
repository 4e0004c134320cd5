# What the edge rules (edge.smk) pass to their scripts and read: their inputs, params
# and targets, kept beside them (functions only: `snakemake --lint` wants rules and functions apart).


def edge_params(*sections):
    """The parts of the edge config a rule reads, so that changing a budget does not rerun pretraining
    (Snakemake reruns a job whose params changed). The sparse section goes without its budget list.
    """
    picked = {key: EDGE[key] for key in ("image_size", "channels", *sections)}
    if "federated" in picked:  # Ray's CPUs are the rule's threads
        picked["federated"] = {
            k: v for k, v in EDGE["federated"].items() if k != "threads"
        }
    if "sparse" in picked:
        picked["sparse"] = {
            k: v for k, v in EDGE["sparse"].items() if k != "budgets_kib"
        }
    return picked


def edge_targets():
    """The edge stages' tables and figures (target `edge`, and `all`): the outputs of the three
    table rules, which read every other edge rule's outputs."""
    return [
        *rules.edge_tables.output,
        *rules.edge_privacy_tables.output,
        *rules.edge_compression_tables.output,
    ]
