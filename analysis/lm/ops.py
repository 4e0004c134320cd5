"""DeepSpeed's compiled ops that a configuration needs, built once and checked before a job trains.

DeepSpeed JIT-compiles its C++ ops the first time they are loaded and caches them under
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), beside the communication op that
every CPU run builds. Optimizer offload (``offload_optimizer``) steps AdamW on the host with the
``cpu_adam`` op (about 70 s to build on 2 cores the first time). ``python -m analysis build-ops``
(``make deepspeed-ops``) builds it ahead, on a login node with a compiler, so that no job pays the
compilation or fails on a node without one.
"""

from __future__ import annotations

import logging
import time

from analysis.errors import PipelineError

log = logging.getLogger(__name__)

BUILD_HINT = ("build it once with `python -m analysis build-ops` (or `make deepspeed-ops`) where a C++ "
              "compiler and ninja are available; it is cached under TORCH_EXTENSIONS_DIR "
              "(~/.cache/torch_extensions)")


def load_cpu_adam():
    """Load (building if not cached) DeepSpeed's CPU Adam op; a PipelineError saying how otherwise."""
    try:
        from deepspeed.ops.op_builder import CPUAdamBuilder

        builder = CPUAdamBuilder()
        if not builder.is_compatible(verbose=False):
            raise PipelineError("DeepSpeed reports its cpu_adam op incompatible with this machine")
        return builder.load(verbose=False)
    except PipelineError as exc:
        raise PipelineError(f"offload_optimizer needs DeepSpeed's cpu_adam op: {exc}; {BUILD_HINT}") from None
    except Exception as exc:  # compiler, ninja, header or linker failures come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PipelineError(f"offload_optimizer needs DeepSpeed's cpu_adam op, which did not load "
                            f"({type(exc).__name__}: {first}); {BUILD_HINT}") from None


def cpu_adam_class():
    """``DeepSpeedCPUAdam``, with its op loaded (so a missing op fails here, in one line)."""
    load_cpu_adam()
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return DeepSpeedCPUAdam


def build_ops() -> dict[str, float]:
    """Build (or find cached) every op a configuration may need; seconds each."""
    seconds = {}
    start = time.perf_counter()
    load_cpu_adam()
    seconds["cpu_adam"] = time.perf_counter() - start
    return seconds
