"""The one training loop: a DeepSpeed engine over packed blocks, with curves, memory and resume.

The same code runs on CPU (DeepSpeed's cpu accelerator, gloo) and on GPUs, for pretraining the demo
base model and for every adaptation mode. The DeepSpeed config is built from plain settings by
``deepspeed_config`` and written beside the outputs; after ``initialize`` the engine's batch
settings are checked against it, so nothing is overridden silently. The optimizer is a torch AdamW
over the trainable parameters only, handed to DeepSpeed (no fused-kernel compilation), and the
schedule a LambdaLR (warm-up, then constant, linear or cosine decay to zero). The loss is the
model's own next-token loss, or with ``loss="chunked"`` the same loss computed without keeping the
logits for backward (``analysis.lm.loss``).

Resume: a checkpoint (engine state: trainable weights, optimizer, scheduler; plus the step, the
curve rows so far and the elapsed time) is written every ``checkpoint_every`` steps, or at every
curve point, to a directory outside the rule's outputs. A rerun with the same fingerprint continues
from the newest one; the data order is a function of the seed and each step reseeds torch from
(seed, step), so a resumed run follows the same path as an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from tqdm import tqdm

from analysis.errors import PipelineError
from analysis.io import write_json
from analysis.lm.loss import forward_loss
from analysis.lm.models import enable_gradient_checkpointing
from analysis.lm.zero import REDUCE_BUCKET_ELEMENTS, ZERO3_REUSE_DISTANCE, check_zero_settings
from analysis.runner import job_settings
from analysis.selection.memory import SavedTensorMeter, optimizer_state_bytes

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    learning_rate: float
    weight_decay: float = 0.0
    warmup_fraction: float = 0.0
    schedule: str = "linear"
    micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 1.0
    zero_stage: int = 0
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer state and step on the CPU (stages 1-3)
    offload_parameters: bool = False  # ZeRO-Infinity's parameter offload to CPU (stage 3 only)
    gradient_checkpointing: bool = False  # Hugging Face activation checkpointing of every block
    precision: str = "float32"
    eval_batch_size: int = 8
    curve_points: int = 5
    checkpoint_every: int = 0
    seed: int = 0
    loss: str = "model"  # "model": the model's own loss; "chunked": analysis.lm.loss (keeps no logits)


class TrainingInterrupted(RuntimeError):
    """Training stopped before the end of the epoch with a checkpoint saved: on SIGTERM, or by
    ``train(stop_after=...)`` (which stands in for a killed job in tests)."""


class TerminationRequest:
    """SIGTERM (what SLURM sends at preemption and at the time limit, ahead of SIGKILL) is noted, so
    the loop can finish its step, save a checkpoint and stop; the rerun resumes from it."""

    def __init__(self) -> None:
        self.received = False
        self._previous = None

    def __enter__(self) -> "TerminationRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.received = True
        log.warning("SIGTERM received: checkpointing after this step, then stopping")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def resolve_precision(dtype: str, device: torch.device) -> str:
    """``auto``: float32 on CPU, bfloat16 on GPUs that support it."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def deepspeed_config(settings: TrainSettings, world_size: int = 1, pin_memory: bool = False) -> dict:
    """The DeepSpeed config of a run; ``pin_memory`` (page-locked host buffers for offload) on GPUs."""
    check_zero_settings(settings.zero_stage, settings.offload_optimizer, settings.offload_parameters)
    zero: dict = {"stage": settings.zero_stage, "reduce_bucket_size": REDUCE_BUCKET_ELEMENTS}
    if settings.zero_stage == 3:
        zero["stage3_max_reuse_distance"] = ZERO3_REUSE_DISTANCE
    if settings.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if settings.offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    return {
        "train_micro_batch_size_per_gpu": settings.micro_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "train_batch_size": settings.micro_batch_size * settings.gradient_accumulation_steps * world_size,
        "gradient_clipping": settings.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": settings.precision == "bfloat16"},
        "fp16": {"enabled": False},
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


def lr_lambda(total_steps: int, warmup_fraction: float, schedule: str):
    warmup = math.ceil(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def curve_steps(total_steps: int, points: int) -> list[int]:
    """Evenly spaced optimizer steps, the first (0, before training) and the last included."""
    return sorted({round(i * total_steps / (points - 1)) for i in range(points)})


def free_port() -> int:
    """A TCP port free on this host now, so parallel jobs (or test ranks) on one node do not collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_defaults() -> dict[str, str]:
    """Single-process values of the variables the deepspeed launcher would set (those it did set are
    kept: ``job_settings`` sets defaults only)."""
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    if "MASTER_PORT" not in os.environ:
        defaults["MASTER_PORT"] = str(free_port())
    return defaults


def close_process_group() -> None:
    """End a training process's part in its process group: wait for every rank, then close the group.

    Call once, when the process has nothing left to do. A gloo process that exits with its group
    open while a peer is still connected can abort ("terminate called without an active exception",
    SIGABRT): a two-rank CI run failed that way after its outputs were written, and 2 of 8 exits
    did here without this call (tests/test_lm.py keeps it). Ranks other than 0 wait at the barrier
    while rank 0 writes the outputs: within torch's 30-minute default collective timeout.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


def skip_shm_comm_op() -> bool:
    """Keep DeepSpeed from compiling its shared-memory communication op for a CPU run.

    On the CPU accelerator DeepSpeed's communication backend JIT-compiles ``deepspeed_shm_comm`` at
    ``initialize`` (33 s on 2 idle cores, about a minute under load, once per machine and torch
    version). The op serves only ``inference_all_reduce``, the all-reduce of tensor-parallel
    layers (``deepspeed.module_inject``), and only when the launcher sets ``LOCAL_SIZE``; data-
    parallel training and ZeRO reduce through torch.distributed (gloo) whether it is built or not.
    DeepSpeed reads which ops it may build from ``deepspeed.ops.__compatible_ops__``, a dict probed
    once per process. True when skipped.
    """
    # DeepSpeed is imported where it runs: its import costs about a second and probes the C
    # toolchain, which the jobs and tools that only read this module's settings should not pay.
    import deepspeed

    if deepspeed.get_accelerator().device_name() != "cpu":
        return False
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return True


@torch.no_grad()
def mean_loss(model, blocks: np.ndarray, batch_size: int, device) -> float:
    """Mean next-token loss (nats) over ``blocks`` (each block weighs its block_size - 1 targets)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = torch.as_tensor(np.array(blocks[start : start + batch_size], dtype=np.int64), device=device)
        loss = model(input_ids=batch, labels=batch).loss
        total += float(loss) * len(batch)
        count += len(batch)
    model.train(was_training)
    return total / count


def _read_fingerprint(directory: Path) -> str | None:
    path = directory / "fingerprint.json"
    return json.loads(path.read_text())["fingerprint"] if path.is_file() else None


def resumable_tag(directory: Path) -> str | None:
    """The checkpoint tag to resume from: the one ``latest`` names, if its directory holds model states;
    else the newest ``step*`` directory that does; None when there is none.

    DeepSpeed writes ``latest`` after a checkpoint's files, but a kill between creating ``latest`` and
    writing the tag into it leaves it empty (seen in CI under load). The checkpoint it was about to
    name is complete by then, and the older one is not yet deleted.
    """
    def complete(tag: str) -> bool:
        return bool(tag) and any((directory / tag).glob("*model_states.pt"))

    latest = directory / "latest"
    named = latest.read_text().strip() if latest.is_file() else ""
    if complete(named):
        return named
    candidates = sorted((p.name for p in directory.glob("step*") if complete(p.name)), reverse=True)
    if latest.is_file():
        log.warning("%s names %r, which is not a complete checkpoint; %s", latest, named,
                    f"resuming from {candidates[0]}" if candidates else "starting afresh")
    return candidates[0] if candidates else None


def _restoring_functional_linear(function):
    """ZeRO-3 replaces ``torch.nn.functional.linear`` process-wide with its own function, which keeps
    every linear input for backward ("This will persist unless manually reset"): put it back after
    the run, so that later work in the process (the saved-tensor meter, the next run) sees torch's."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        linear = torch.nn.functional.linear
        try:
            return function(*args, **kwargs)
        finally:
            torch.nn.functional.linear = linear

    return wrapper


@_restoring_functional_linear
def train(
    model,
    blocks: np.ndarray,
    order: np.ndarray,
    eval_sets: Mapping[str, np.ndarray],
    settings: TrainSettings,
    *,
    checkpoint_dir: str | Path,
    fingerprint: str,
    output_config: str | Path | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` on ``blocks[order]`` (one pass over ``order``); the run's record.

    ``eval_sets`` maps a name to blocks scored at every curve point (``<name>_loss`` columns).
    Returns ``{"curves": [...], "steps", "tokens_trained", "blocks_dropped", "train_seconds",
    "eval_seconds", "memory": {...}, "deepspeed_config": {...}}``. Outside the deepspeed launcher
    the process runs as rank 0 of 1 (``distributed_defaults``), and the variables are unset again
    afterwards.
    """
    with job_settings(env=distributed_defaults()):
        return _train(model, blocks, order, eval_sets, settings, checkpoint_dir=checkpoint_dir,
                      fingerprint=fingerprint, output_config=output_config, stop_after=stop_after, progress=progress)


def _train(model, blocks, order, eval_sets, settings, *, checkpoint_dir, fingerprint, output_config, stop_after,
           progress) -> dict:
    """``train`` with the distributed variables set (a process group, once made, stays for the process)."""
    # DeepSpeed is imported where it runs: its import costs about a second and probes the C
    # toolchain, which the jobs and tools that only read this module's settings should not pay.
    import deepspeed

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    skip_shm_comm_op()
    checkpoint_dir = Path(checkpoint_dir)
    per_step = settings.micro_batch_size * settings.gradient_accumulation_steps * world
    total_steps = len(order) // per_step
    if total_steps == 0:
        raise PipelineError(
            f"{len(order)} blocks are fewer than one optimizer step of {per_step} "
            f"(micro_batch_size x gradient_accumulation_steps x {world} processes)"
        )
    blocks_dropped = len(order) - total_steps * per_step
    block_size = blocks.shape[1]

    ds_config = deepspeed_config(settings, world, pin_memory=torch.cuda.is_available())
    if output_config is not None and rank == 0:
        write_json(output_config, ds_config)
    if settings.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, settings.warmup_fraction, settings.schedule)
    )
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    effective = (engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps())
    if effective != (settings.micro_batch_size, settings.gradient_accumulation_steps):
        raise PipelineError(f"DeepSpeed changed the batch settings {ds_config} to {effective}")
    engine.enable_backward_allreduce = reduces_gradients(world, settings.zero_stage)
    device = engine.device
    if device.type == "cuda":  # the record's peak is the training's, not what ran before in the process
        torch.cuda.reset_peak_memory_stats(device)

    state = {"step": 0, "curves": [], "train_seconds": 0.0, "eval_seconds": 0.0, "memory": None}
    if _read_fingerprint(checkpoint_dir) not in (None, fingerprint):
        log.warning("checkpoints in %s are from a different run configuration: starting afresh", checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
    tag = resumable_tag(checkpoint_dir)
    if tag is not None:
        _, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=tag, load_module_strict=False)
        state.update(client_state["run_state"])
        log.info("resumed from %s at step %d of %d", checkpoint_dir, state["step"], total_steps)

    points = curve_steps(total_steps, settings.curve_points)
    every = settings.checkpoint_every

    def save(step: int) -> None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (checkpoint_dir / "fingerprint.json").write_text(json.dumps({"fingerprint": fingerprint}))
        engine.save_checkpoint(str(checkpoint_dir), tag=f"step{step:08d}",
                               client_state={"run_state": state}, exclude_frozen_parameters=True)
        for old in checkpoint_dir.glob("step*"):
            if old.name != f"step{step:08d}":
                shutil.rmtree(old, ignore_errors=True)

    def record_curve(step: int) -> None:
        start = time.perf_counter()
        row = {"step": step, "tokens_seen": step * per_step * block_size,
               "epoch_fraction": step / total_steps, "learning_rate": scheduler.get_last_lr()[0]}
        for name, eval_blocks in eval_sets.items():
            row[f"{name}_loss"] = mean_loss(engine.module, eval_blocks, settings.eval_batch_size, device)
        state["curves"].append(row)
        state["eval_seconds"] += time.perf_counter() - start
        log.info("curve %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})

    engine.train()
    if state["step"] == 0 and not state["curves"]:
        record_curve(0)
    bar = tqdm(total=total_steps, initial=state["step"], desc="train", disable=not progress or rank != 0,
               mininterval=5, file=None)
    with TerminationRequest() as termination:
        while state["step"] < total_steps:
            step = state["step"]
            torch.manual_seed(settings.seed * 1_000_003 + step)
            start = time.perf_counter()
            for micro in range(settings.gradient_accumulation_steps):
                first = (step * settings.gradient_accumulation_steps + micro) * settings.micro_batch_size * world
                mine = order[first + rank * settings.micro_batch_size : first + (rank + 1) * settings.micro_batch_size]
                batch = torch.as_tensor(blocks[mine], dtype=torch.long, device=device)
                if state["memory"] is None:
                    with SavedTensorMeter(engine.module) as meter:
                        loss = forward_loss(engine, batch, settings.loss, module=engine.module)
                    saved = meter.result()
                else:
                    loss = forward_loss(engine, batch, settings.loss, module=engine.module)
                    if settings.zero_stage == 3 and "gathered_bytes_after_forward" not in state["memory"]:
                        # The first step traced the module order; from the second on, ZeRO-3 keeps
                        # whole the tensors it will reuse soon (ZERO3_REUSE_DISTANCE): what it holds now.
                        state["memory"]["gathered_bytes_after_forward"] = gathered_bytes(engine.module)
                engine.backward(loss)
                engine.step()
            state["train_seconds"] += time.perf_counter() - start
            if state["memory"] is None:
                state["memory"] = _memory_record(engine, optimizer, params, saved, settings, block_size)
            state["step"] = step + 1
            bar.update(1)
            if state["step"] in points:
                record_curve(state["step"])
            due = (every and state["step"] % every == 0) or (not every and state["step"] in points)
            if state["step"] < total_steps and (due or termination.received):
                save(state["step"])
            if stop_after is not None and state["step"] >= stop_after:
                raise TrainingInterrupted(f"stopped after step {state['step']}")
            if termination.received and state["step"] < total_steps:
                raise TrainingInterrupted(f"SIGTERM: stopped after step {state['step']} of {total_steps} with a "
                                          "checkpoint saved; rerun to resume")
    bar.close()
    # Peaks over the whole run (the record's other figures are from the first step).
    state["memory"]["peak_resident_bytes"] = peak_resident_bytes()
    if device.type == "cuda":
        state["memory"]["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    tokens = total_steps * per_step * block_size
    module, state_dict = engine.module, None
    if settings.zero_stage == 3:
        # Every rank takes part in the gather; rank 0 receives whole tensors (on CPU), layer by layer.
        state_dict = engine._zero3_consolidated_16bit_state_dict()
        module = None
    return {
        "steps": total_steps,
        "blocks": int(len(order)),
        "blocks_dropped": int(blocks_dropped),
        "tokens_trained": int(tokens),
        "block_size": int(block_size),
        "train_seconds": state["train_seconds"],
        "eval_seconds": state["eval_seconds"],
        "tokens_per_second": tokens / state["train_seconds"] if state["train_seconds"] else float("nan"),
        "curves": state["curves"],
        "memory": state["memory"],
        "deepspeed_config": ds_config,
        "settings": asdict(settings),
        "world_size": world,
        "device": str(device),
        "module": module,  # the trained module (None under ZeRO-3: its parameters are partitioned)
        "state_dict": state_dict,  # under ZeRO-3, on rank 0: the whole trained tensors
    }


def reduces_gradients(world: int, zero_stage: int) -> bool:
    """Whether DeepSpeed's engine reduces gradients after backward. One process under ZeRO-0 has
    nothing to reduce, yet DeepSpeed would flatten every gradient into a new buffer (T w bytes),
    average it over one process and copy it back: the same gradients, bit for bit (tested), for a
    pass over all of them each step. ZeRO-1/2/3 move gradients into their partitions there."""
    return world > 1 or zero_stage > 0


def make_optimizer(params: list, settings: TrainSettings):
    """AdamW over the trainable parameters: torch's, or under optimizer offload DeepSpeed's CPU Adam
    (the same update, in AdamW mode, run by its compiled CPU op on the offloaded fp32 partition)."""
    if not settings.offload_optimizer:
        return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay,
                                 foreach=True)
    from analysis.lm.ops import cpu_adam_class  # DeepSpeed's op builder: only for offload

    return cpu_adam_class()(params, lr=settings.learning_rate, weight_decay=settings.weight_decay,
                            adamw_mode=True)


def numel(p: torch.Tensor) -> int:
    """Elements of a parameter, whole (under ZeRO-3 ``p`` itself is an empty placeholder)."""
    return int(getattr(p, "ds_numel", p.numel()))


def partition_bytes(engine, optimizer) -> dict:
    """What DeepSpeed allocated on this rank, read from its own structures: the optimizer's state
    tensors (AdamW moments), the master copy of the trained parameters it steps (ZeRO's fp32 flat
    partition, when not the module's own tensors), and under ZeRO-3 the parameter partition."""
    inner = getattr(optimizer, "optimizer", optimizer)
    module_storages = set()
    for p in engine.module.parameters():
        for t in (p, getattr(p, "ds_tensor", None)):
            if t is not None and t.numel():
                module_storages.add(t.untyped_storage().data_ptr())
    # ZeRO-3 fills the inner optimizer's groups only while it steps; ZeRO-1/2 keep them filled.
    masters = (getattr(optimizer, "fp32_partitioned_groups_flat", None)
               or getattr(optimizer, "single_partition_of_fp32_groups", None)
               or [p for group in inner.param_groups for p in group["params"]])
    master = sum(t.numel() * t.element_size() for t in masters
                 if t.numel() and t.untyped_storage().data_ptr() not in module_storages)
    parameters = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() if hasattr(p, "ds_tensor")
                     else p.numel() * p.element_size() for p in engine.module.parameters())
    return {"optimizer_state_bytes": optimizer_state_bytes(inner), "master_weight_bytes": int(master),
            "parameter_partition_bytes": int(parameters)}


def gradient_buffer_bytes(optimizer) -> dict:
    """ZeRO-1/2's gradient buffers as DeepSpeed sizes them, read from its optimizer: the reduction
    bucket (allocated at each backward and released after it: its size and dtype) and, under optimizer
    offload, the copy buffers of the largest trained tensor on the device and on the host and the
    host's fp32 gradient partition. ``{}`` for ZeRO-0 and ZeRO-3. The memory plan counts the same
    (``plan.state_bytes``; tests/test_plan.py)."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if not isinstance(optimizer, DeepSpeedZeroOptimizer):
        return {}
    buckets = (2 if optimizer.overlap_comm else 1) if optimizer.contiguous_gradients else 0
    element = torch.empty(0, dtype=optimizer._gradient_reduction_buffer_dtype()).element_size()
    record = {"reduce_bucket_bytes": int(buckets * optimizer.reduce_bucket_size * element)}
    if optimizer.cpu_offload:
        record["offload_copy_bytes"] = {
            where: int(t.numel() * t.element_size())
            for where, t in (("device", optimizer.temp_grad_buffer_for_gpu_offload),
                             ("host", optimizer.temp_grad_buffer_for_cpu_offload))}
        # The host's fp32 gradient partition the CPU step reads (kept between steps under offload).
        record["fp32_gradient_bytes"] = int(sum(g.grad.numel() * g.grad.element_size()
                                                for g in optimizer.single_partition_of_fp32_groups))
    return record


def peak_resident_bytes() -> int:
    """The process's peak resident memory (VmHWM), Linux; 0 where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def gathered_bytes(module) -> int:
    """Bytes of ``module``'s ZeRO-3 parameters that are whole (gathered from their partitions) now."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    unique = {id(p): p for p in module.parameters()}.values()  # a tied head counts once
    return int(sum(p.ds_numel * p.element_size() for p in unique
                   if getattr(p, "ds_status", None) == ZeroParamStatus.AVAILABLE))


def _memory_record(engine, optimizer, params, saved: dict, settings: TrainSettings, block_size: int) -> dict:
    trainable = sum(numel(p) for p in params)
    record = {
        "per_micro_batch": {"blocks": settings.micro_batch_size, "block_size": block_size},
        "loss": settings.loss,
        "zero_stage": settings.zero_stage,
        "offload_optimizer": settings.offload_optimizer,
        "offload_parameters": settings.offload_parameters,
        "gradient_checkpointing": settings.gradient_checkpointing,
        "precision": settings.precision,
        "world_size": int(engine.world_size),
        "saved_for_backward_bytes": saved["saved_bytes"],
        "saved_for_backward_by_kind_bytes": saved["by_kind"],
        "saved_tensors": saved["saved_tensors"],
        "trainable_parameters": int(trainable),
        "trainable_parameter_bytes": int(sum(numel(p) * p.element_size() for p in params)),
        "gradient_bytes": int(sum(numel(p) * p.element_size() for p in params)),
        "total_parameters": int(sum(numel(p) for p in engine.module.parameters())),
        **partition_bytes(engine, optimizer),
        **gradient_buffer_bytes(optimizer),
        "peak_resident_bytes_after_first_step": peak_resident_bytes(),
    }
    if engine.device.type == "cuda":
        record["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(engine.device))
    return record
