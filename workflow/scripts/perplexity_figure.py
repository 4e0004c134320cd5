"""Rule perplexity_figure: the paper's Figure 1 for one model and mode."""

import pandas as pd

from analysis.runner import rule_log
from analysis.tables.perplexity import perplexity_figure

with rule_log(snakemake.log[0]):
    perplexity_figure(pd.read_csv(snakemake.input.perplexity, sep="\t"),
                      pd.read_csv(snakemake.input.distances, sep="\t"),
                      snakemake.wildcards.model, snakemake.wildcards.mode, snakemake.params.corpus,
                      snakemake.output[0], train_policy=snakemake.params.train_policy,
                      estimator=snakemake.params.estimator)
