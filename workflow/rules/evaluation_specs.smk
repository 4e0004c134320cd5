# What the evaluation rules (evaluation.smk) pass to their scripts and read: their inputs, params
# and targets, kept beside them (functions only: `snakemake --lint` wants rules and functions apart).


def evaluation_spec(wildcards):
    """Arguments of analysis.lm.evaluate.evaluate shared by rules zero_shot and evaluate."""
    return {
        "model_key": wildcards.model,
        "model_spec": config["models"][wildcards.model],
        "stage": wildcards.get("mode", "zero_shot"),
        "train_policy": wildcards.get("train_policy"),
        "domain": wildcards.domain,
        "portion": config_lib.domain_portion(config, wildcards.domain),
        "evaluation": EVALUATION,
        "seed": config["seed"],
    }


def join_policy_runs():
    """The ablation's runs: model, training join policy, domain, and the evaluation files (without extension)
    of its zero-shot and adapted model, named as rules zero_shot and evaluate write them.
    """
    return [
        {
            "model": model,
            "train_policy": train_policy,
            "domain": domain,
            "zero_shot": f"{RESULTS}/eval/{model}/zero_shot/{domain}",
            "adapted": f"{RESULTS}/eval/{model}/{train_policy}/{ABLATION['mode']}/{domain}",
        }
        for model in ABLATION["models"]
        for train_policy in ABLATION["policies"]
        for domain in ABLATION_DOMAINS
    ]
