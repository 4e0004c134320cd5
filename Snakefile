# Continued pretraining of language models and the memory cost of on-device training.
# The rules live in workflow/rules/, the logic in the importable package analysis/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/corpora.smk"


rule all:
    input:
        all_targets(),
    default_target: True
