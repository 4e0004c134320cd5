# What the adaptation rules (adaptation.smk) pass to their scripts and read: their inputs, params
# and targets, kept beside them (functions only: `snakemake --lint` wants rules and functions apart).


def adapt_spec(wildcards, output, threads):
    """The adapt job's arguments, one shell-quoted JSON word (the deepspeed launcher passes it on)."""
    import json
    import shlex

    spec = {
        "log": f"{LOGS}/adapt/{wildcards.model}/{wildcards.train_policy}/{wildcards.mode}/{wildcards.domain}.log",
        "model_key": wildcards.model,
        "model_spec": config["models"][wildcards.model],
        "mode": wildcards.mode,
        "train_policy": wildcards.train_policy,
        "scheme_options": ADAPTATION["schemes"],
        "domain": wildcards.domain,
        "tokens": token_files(
            wildcards.model, wildcards.train_policy, wildcards.domain
        )["tokens"],
        "output_dir": str(Path(output.metrics).parent),
        "checkpoint_dir": f"{ADAPTATION['checkpoint_root']}/adapt/{wildcards.model}/{wildcards.train_policy}/{wildcards.mode}/{wildcards.domain}",
        "adaptation": {
            k: ADAPTATION[k]
            for k in (
                "curve_points",
                "curve_max_blocks",
                "max_train_tokens",
                "seen_first_fraction",
                "checkpoint_every",
                "loss",
                "plan",
            )
        },
        "seed": config["seed"],
        "threads": threads,
    }
    return shlex.quote(json.dumps(spec))


def launcher(gpus):
    """One process, or `deepspeed --num_gpus N` for multi-GPU jobs."""
    script = workflow.source_path("../scripts/adapt.py")
    if gpus > 1:
        return f"deepspeed --num_gpus {gpus} {script}"
    return f"{sys.executable} {script}"
