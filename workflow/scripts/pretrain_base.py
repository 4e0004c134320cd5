"""Rule pretrain_base: BPE tokenizer and a small GPT-2 trained on the demo source corpus."""

from analysis.lm.pretrain import pretrain_base
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    pretrain_base(
        corpus_spec=snakemake.params.corpus_spec,
        shape=snakemake.params.shape,
        context_length=snakemake.params.context_length,
        output_dir=snakemake.output.model,
        metrics=snakemake.output.metrics,
        checkpoint_dir=snakemake.params.checkpoint_dir,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
    )
