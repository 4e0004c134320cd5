"""The ZeRO settings DeepSpeed runs, and the DeepSpeed values the memory plan and the training
loop must agree on (``analysis.lm.train.deepspeed_config`` writes them into every run's config;
``analysis.lm.plan`` counts them). Configuration validation, the plan and the training loop import
them from here, so none of them imports another for it.
"""

from __future__ import annotations

from analysis.errors import PipelineError

#: DeepSpeed's gradient reduction bucket (elements): ZeRO-1/2 allocate one on the device at every
#: backward, in the training precision, whatever the model's size (``setup_buckets``; two with
#: overlap_comm, which stages 1-2 leave off). DeepSpeed's default, written into every run's config
#: (``analysis.lm.train.deepspeed_config``) so that the plan and the run agree.
REDUCE_BUCKET_ELEMENTS = 500_000_000
#: ZeRO-3's ``stage3_max_reuse_distance`` (parameters; DeepSpeed's default, written into every ZeRO-3
#: run's config): once the first step has traced the module order, a gathered parameter is released
#: after its module's forward only if the trace reaches no further use of it within R parameters.
#: A block's next use is its backward, 2 x (the parameters after it) away, so the blocks in the last
#: R / 2 parameters of the forward stay whole until their backward: a model under R / 2 parameters
#: (GPT-2 small, SmolLM2-135M) holds every tensor whole at the peak, on top of its partitions
#: (measured: benchmarks/memory_plan.py, row "gathered at the end of forward"); OLMo-1B and LLaMA-7B
#: hold about R / 2 (modelled from DeepSpeed's release rule, not measured here).
ZERO3_REUSE_DISTANCE = 1_000_000_000


def check_zero_settings(stage, offload_optimizer: bool, offload_parameters: bool, where: str = "",
                        error: type[Exception] = PipelineError) -> None:
    """The ZeRO stage / offload combinations DeepSpeed runs; anything else is one line naming the keys."""
    prefix = f"{where}: " if where else ""
    if stage not in (0, 1, 2, 3):
        raise error(f"{prefix}zero_stage = {stage!r}; expected 0, 1, 2 or 3")
    if offload_optimizer and stage == 0:
        raise error(f"{prefix}offload_optimizer needs zero_stage 1, 2 or 3 (it offloads ZeRO's "
                    "optimizer partition), not 0")
    if offload_parameters and stage != 3:
        raise error(f"{prefix}offload_parameters needs zero_stage 3 (only stage 3 partitions the "
                    f"parameters), not {stage}")
