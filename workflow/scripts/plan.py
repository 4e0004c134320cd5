"""Rule plan: one model's memory plan (analysis/lm/plan.py), as JSON for the adapt jobs' resources
and as a Markdown table to read."""

from analysis.lm.plan import write_plan
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    write_plan(snakemake.config, snakemake.wildcards.model, snakemake.output.json, snakemake.output.table)
