"""Rules zero_shot and evaluate: perplexity and token-level NLL of the base or an adapted model."""

from analysis.lm.evaluate import evaluate
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    evaluate(
        **snakemake.params.spec,
        tokens=snakemake.input.tokens,
        tokens_metadata=snakemake.input.metadata,
        weights=snakemake.input.get("weights"),
        adapt_metrics=snakemake.input.get("adapted"),
        output_json=snakemake.output.json,
        output_npz=snakemake.output.npz,
        threads=snakemake.threads,
    )
