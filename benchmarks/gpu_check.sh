#!/usr/bin/env bash
# GPU check (issue 15, part 5) on a GPU machine without network access, from the repository root:
#   bash benchmarks/gpu_check.sh [args of gpu_check.py, e.g. --out FILE]
# Here first: `make gpu-wheels` (fills wheels/ with what benchmarks/gpu_carry.json lists, 18 MiB);
# carry wheels/ with the tree. On the machine, with its own Python and CUDA torch:
#   1. writes the machine's `pip list --format=freeze` (to replace benchmarks/gpu_image.txt),
#   2. checks that wheels/ holds every carried wheel this Python needs (else one line, exit 2),
#   3. installs them from wheels/ only into a directory put first on PYTHONPATH: a virtual
#      environment made from the image's python3, itself one, would not see the image's packages,
#   4. finds the CUDA toolkit for DeepSpeed's op builds (CUDA_HOME, the libraries' directories),
#   5. runs benchmarks/gpu_check.py within the 8 minutes (GPU_CHECK_BUDGET_S for its rows).
# bash benchmarks/gpu_check.sh --smoke (make test, no GPU): steps 1, 4 and 5 with gpu_check.py --smoke
# on this machine's environment; steps 2 and 3 (the carried wheels, for CPython 3.12) are skipped,
# tests/test_gpu_check.py runs their preflight on made-up wheels.
set -euo pipefail
SMOKE=
if [ "${1:-}" = "--smoke" ]; then
  SMOKE=1
fi
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
FREEZE=${GPU_CHECK_FREEZE:-${OUT:+$OUT/gpu_image.txt}}
FREEZE=${FREEZE:-/tmp/gpu_image.txt}

# 1. Before anything is installed, so that the list is the image's own.
{
  echo "# The Python packages of the GPU machine's image: \`pip list --format=freeze\` of $PY on $(hostname),"
  echo "# $(date -u +%Y-%m-%dT%H:%MZ), written by benchmarks/gpu_check.sh; GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo unknown)."
  echo "# A name alone: installed, version not known (taken as meeting any requirement)."
  env -u PYTHONPATH "$PY" -c 'import platform, sys; v = platform.python_version(); print(f"# python_version: {v.rsplit(chr(46), 1)[0]}\n# python_full_version: {v}\n# python: {sys.executable} ({platform.python_implementation()} {v}, {platform.machine()})")'
  env -u PYTHONPATH "$PY" -m pip list --format=freeze 2>/dev/null
} >"$FREEZE"
echo "gpu_check: this machine's $(grep -vc '^#' "$FREEZE") Python packages are in $FREEZE (copy it over benchmarks/gpu_image.txt, then make gpu-wheels)" >&2

if [ -z "$SMOKE" ]; then
  # 2. One line and exit 2 when a carried wheel is missing or built for another Python.
  wheels=$("$PY" benchmarks/gpu_wheels.py check --wheels "${GPU_CHECK_WHEELS:-wheels}") || exit 2

  if ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "gpu_check: no CUDA torch for $PY: this check needs a GPU machine with torch installed" >&2
    exit 2
  fi

  # 3. --no-deps: the manifest's set is closed against the image (tests/test_gpu_check.py).
  rm -rf "$SITE"
  if [ -n "$wheels" ]; then
    echo "gpu_check: installing $(echo "$wheels" | wc -l) carried wheels into $SITE" >&2
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check --target "$SITE" $wheels
  fi
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$SITE/bin:$PATH"
  "$PY" benchmarks/gpu_wheels.py check --after-install
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# 4. Prints what it found; the exports go to this shell.
eval "$("$PY" benchmarks/gpu_wheels.py cuda-env)"
export HF_HUB_OFFLINE=1

# 5. The rows get what is left of 450 s; the timeout is the last resort at 8 minutes.
export GPU_CHECK_BUDGET_S=$((450 - SECONDS))
timeout $((480 - SECONDS)) "$PY" benchmarks/gpu_check.py "$@"
