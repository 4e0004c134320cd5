# Continued pretraining of language models and the memory cost of on-device training.
# The rules live in workflow/rules/, the logic in the importable package analysis/.
from snakemake.utils import min_version

min_version("9.0")


# The embedded demo config, unless the command line names another (--configfile presets/paper.yaml):
# Snakemake would otherwise merge the two, and the demo's corpora would leak into the preset.
if not workflow.configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/corpora.smk"
include: "workflow/rules/similarity.smk"
include: "workflow/rules/adaptation.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/edge.smk"


rule all:
    default_target: True
    input:
        all_targets(),


# What the run made and its headline numbers, or the failing job's log (analysis/run_summary.py).
onsuccess:
    from analysis.run_summary import success_summary

    print(success_summary(RESULTS, config))


onerror:
    from analysis.run_summary import failure_summary

    print(failure_summary(log))
