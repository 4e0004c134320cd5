#!/usr/bin/env bash
# How long `make`'s install step takes: pip (what the Makefile used before) against uv (what it uses),
# each into a fresh virtual environment, uv with an empty cache of its own, pip with the machine's
# pip cache as it is. Then, with that uv cache warm (as on a second clone), side by side: the
# Makefile's uv install (torch, then the lock: two calls, each compiling what it installs) against
# one uv call for both (tried 2026-11-30: no faster, so the Makefile keeps torch first).
# Run from the repository root: bash benchmarks/install.sh [--uv-only]
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seconds() { local start=$SECONDS; "$@" >/dev/null 2>&1; echo $((SECONDS - start)); }
packages() { "$1/bin/python" -m pip list 2>/dev/null | tail -n +3 | wc -l; }
export UV_CACHE_DIR="$work/uv-cache"

# What the Makefile ran before (at 0c1b7a1).
pip_install() {
  python3 -m venv "$work/pip" && "$work/pip/bin/python" -m pip install --quiet --upgrade pip &&
  "$work/pip/bin/python" -m pip install --quiet torch==2.13.0 &&
  "$work/pip/bin/python" -m pip install --quiet -r envs/requirements.lock &&
  "$work/pip/bin/python" -m pip install --quiet --no-deps -e .
}
# The Makefile's own install step, into another virtual environment.
uv_install() { make VENV="$1" "$1/.installed"; }
# The alternative: torch pinned in the same uv call as the lock.
uv_one_call() {
  local venv=$1 links=()
  for dir in ${PIP_FIND_LINKS:-}; do links+=(--find-links "$dir"); done
  local uv=("$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --compile-bytecode "${links[@]}")
  python3 -m venv "$venv" && "$venv/bin/python" -m pip install --quiet "$(grep "^uv==" envs/requirements.lock)" &&
  "${uv[@]}" torch==2.13.0 -r envs/requirements.lock && "${uv[@]}" --no-deps -e .
}
echo "| installer | uv cache | seconds | packages |"
echo "|---|---|---:|---:|"
if [[ ${1:-} != --uv-only ]]; then
  s=$(seconds pip_install); echo "| pip | - | $s | $(packages "$work/pip") |"
fi
s=$(seconds uv_install "$work/uv"); echo "| uv (Makefile) | empty | $s | $(packages "$work/uv") |"
s=$(seconds uv_install "$work/uv-two"); echo "| uv (Makefile: torch, then the lock) | warm | $s | $(packages "$work/uv-two") |"
s=$(seconds uv_one_call "$work/uv-one"); echo "| uv, torch and the lock in one call | warm | $s | $(packages "$work/uv-one") |"
