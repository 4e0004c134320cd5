#!/usr/bin/env bash
# GPU check (issue 15, part 5), on a GPU machine without network access, from the repository root:
#   bash benchmarks/gpu_check.sh [args of gpu_check.py]
# Here first: `make gpu-wheels` (fills wheels/, ~41 MB; carry it to the GPU machine with the tree).
# Uses the machine's own Python and CUDA torch; installs, from wheels/ only, what it lacks, into a
# virtual environment that sees the system packages (so torch stays the machine's).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "no CUDA torch for $PY: this check needs a GPU machine with torch installed" >&2
  exit 2
fi
ENV=${GPU_CHECK_VENV:-/tmp/gpu-check-venv}
[ -x "$ENV/bin/python" ] || $PY -m venv --system-site-packages "$ENV"
missing=$("$ENV/bin/python" - <<'PY'
import importlib.metadata as m
want = {"deepspeed": "0.19.8", "transformers": "5.23.0", "peft": "0.21.2", "tokenizers": "0.23.3",
        "safetensors": "0.8.0", "pandas": None, "matplotlib": None}  # the last two: not in wheels/
out = []
for name, version in want.items():
    try:
        have = m.version(name)
    except m.PackageNotFoundError:
        have = None
    if have is None or (version and have != version):
        out.append(f"{name}=={version}" if version else name)
print(" ".join(out))
PY
)
if [ -n "$missing" ]; then
  echo "installing from wheels/: $missing"
  "$ENV/bin/python" -m pip install --quiet --no-index --find-links wheels $missing
fi
# The package itself, without dependencies (they are the machine's or the wheels').
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
timeout 480 "$ENV/bin/python" benchmarks/gpu_check.py "$@"
