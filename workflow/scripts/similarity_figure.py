"""Rule similarity_figure: MMD and FD per domain for one corpus (the paper's Figure 2)."""

import pandas as pd

from analysis.runner import rule_log
from analysis.tables.similarity import similarity_figure

with rule_log(snakemake.log[0]):
    frame = pd.read_csv(snakemake.input[0], sep="\t")
    similarity_figure(frame, snakemake.wildcards.corpus, snakemake.output[0], estimator=snakemake.params.estimator)
