#!/usr/bin/env bash
# How long `make`'s install step takes: pip (what the Makefile used before) against uv (what it uses),
# each into a fresh virtual environment, uv with an empty cache of its own, pip with the machine's
# pip cache as it is. Run from the repository root: bash benchmarks/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seconds() { local start=$SECONDS; "$@" >/dev/null 2>&1; echo $((SECONDS - start)); }

# What the Makefile ran before (at 0c1b7a1).
pip_install() {
  python3 -m venv "$work/pip" && "$work/pip/bin/python" -m pip install --quiet --upgrade pip &&
  "$work/pip/bin/python" -m pip install --quiet torch==2.13.0 &&
  "$work/pip/bin/python" -m pip install --quiet -r envs/requirements.lock &&
  "$work/pip/bin/python" -m pip install --quiet --no-deps -e .
}
# The Makefile's own install step, into another virtual environment.
uv_install() { UV_CACHE_DIR="$work/uv-cache" make VENV="$work/uv" "$work/uv/.installed"; }
echo "| installer | seconds | packages |"
echo "|---|---:|---:|"
s=$(seconds pip_install); echo "| pip | $s | $("$work/pip/bin/python" -m pip list 2>/dev/null | tail -n +3 | wc -l) |"
s=$(seconds uv_install); echo "| uv | $s | $("$work/uv/bin/python" -m pip list 2>/dev/null | tail -n +3 | wc -l) |"
