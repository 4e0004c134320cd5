#!/usr/bin/env bash
# What Snakemake's default ILP job scheduler costs against its greedy one on this machine: a toy
# workflow of 70 independent 0.5 s jobs on 2 cores (the demo has 69 jobs), each scheduler twice,
# wall time and the CPU time of Snakemake and its solver processes. Both honour rule priorities.
# Run from the repository root: bash benchmarks/scheduler.sh
set -euo pipefail
cd "$(dirname "$0")/.."
snakemake=$PWD/.venv/bin/snakemake
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/Snakefile" <<'SMK'
rule all:
    input:
        expand("out/{i}.txt", i=range(70)),


rule job:
    output:
        "out/{i}.txt",
    shell:
        "sleep 0.5; touch {output}"
SMK
echo "| scheduler | wall s | CPU s (user + sys) |"
echo "|---|---:|---:|"
for scheduler in ilp greedy ilp greedy; do
  rm -rf "$work/out" "$work/.snakemake"
  /usr/bin/time -f "%e %U %S" -o "$work/time" \
    "$snakemake" -q --snakefile "$work/Snakefile" --directory "$work" --cores 2 --scheduler "$scheduler" >/dev/null 2>&1
  read -r wall user sys < "$work/time"
  echo "| $scheduler | $wall | $(echo "$user + $sys" | bc) |"
done
