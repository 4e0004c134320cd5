"""Rule adapt (a shell rule, so that multi-GPU jobs can start under the deepspeed launcher).

Usage: adapt.py '<json spec>' (built by adapt_spec in workflow/rules/adaptation_specs.smk).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from analysis.lm.adapt import adapt  # noqa: E402
from analysis.lm.train import close_process_group  # noqa: E402
from analysis.runner import rule_log  # noqa: E402

spec = json.loads(sys.argv[-1])
rank = int(os.environ.get("RANK", "0"))
log = spec.pop("log")
with rule_log(log if rank == 0 else f"{log}.rank{rank}"):
    adapt(**spec)
    close_process_group()
