#!/usr/bin/env bash
# What Snakemake's default ILP job scheduler costs against its greedy one on this machine: a toy
# workflow of 70 independent 0.5 s jobs on 2 cores (the demo has 69 jobs), each scheduler twice,
# wall time and the CPU time of Snakemake and its solver processes. Both honour rule priorities.
# Run from the repository root: bash benchmarks/scheduler.sh
# bash benchmarks/scheduler.sh --smoke: 10 jobs of 0.1 s, each scheduler once (make test).
set -euo pipefail
jobs=70 seconds=0.5 schedulers="ilp greedy ilp greedy"
if [ "${1:-}" = "--smoke" ]; then
  jobs=10 seconds=0.1 schedulers="ilp greedy"
fi
cd "$(dirname "$0")/.."
snakemake=$PWD/.venv/bin/snakemake
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/Snakefile" <<'SMK'
rule all:
    input:
        expand("out/{i}.txt", i=range(JOBS)),


rule job:
    output:
        "out/{i}.txt",
    shell:
        "sleep SECONDS; touch {output}"
SMK
echo "| scheduler | wall s | CPU s (user + sys) |"
echo "|---|---:|---:|"
sed -i "s/JOBS/$jobs/; s/SECONDS/$seconds/" "$work/Snakefile"
for scheduler in $schedulers; do
  rm -rf "$work/out" "$work/.snakemake"
  /usr/bin/time -f "%e %U %S" -o "$work/time" \
    "$snakemake" -q --snakefile "$work/Snakefile" --directory "$work" --cores 2 --scheduler "$scheduler" >/dev/null 2>&1
  read -r wall user sys < "$work/time"
  echo "| $scheduler | $wall | $(echo "$user + $sys" | bc) |"
done
