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

import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from tqdm import tqdm

from analysis.errors import PipelineError
from analysis.lm.loss import forward_loss
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


def deepspeed_config(settings: TrainSettings, world_size: int = 1) -> dict:
    return {
        "train_micro_batch_size_per_gpu": settings.micro_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "train_batch_size": settings.micro_batch_size * settings.gradient_accumulation_steps * world_size,
        "gradient_clipping": settings.gradient_clipping,
        "zero_optimization": {"stage": settings.zero_stage},
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


def init_distributed() -> tuple[int, int]:
    """Single-process defaults for the variables the deepspeed launcher would set; (rank, world)."""
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:  # a free port, so parallel jobs on one node do not collide
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


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
    "eval_seconds", "memory": {...}, "deepspeed_config": {...}}``.
    """
    import deepspeed

    rank, world = init_distributed()
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

    ds_config = deepspeed_config(settings, world)
    if output_config is not None and rank == 0:
        from analysis.io import write_json

        write_json(output_config, ds_config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay,
                                  foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, settings.warmup_fraction, settings.schedule)
    )
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    effective = (engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps())
    if effective != (settings.micro_batch_size, settings.gradient_accumulation_steps):
        raise PipelineError(f"DeepSpeed changed the batch settings {ds_config} to {effective}")
    device = engine.device

    state = {"step": 0, "curves": [], "train_seconds": 0.0, "eval_seconds": 0.0, "memory": None}
    if _read_fingerprint(checkpoint_dir) not in (None, fingerprint):
        log.warning("checkpoints in %s are from a different run configuration: starting afresh", checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
    if (checkpoint_dir / "latest").is_file():
        _, client_state = engine.load_checkpoint(str(checkpoint_dir), load_module_strict=False)
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
    tokens = total_steps * per_step * block_size
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
        "module": engine.module,
    }


def _memory_record(engine, optimizer, params, saved: dict, settings: TrainSettings, block_size: int) -> dict:
    inner = getattr(optimizer, "optimizer", optimizer)
    record = {
        "per_micro_batch": {"blocks": settings.micro_batch_size, "block_size": block_size},
        "loss": settings.loss,
        "saved_for_backward_bytes": saved["saved_bytes"],
        "saved_for_backward_by_kind_bytes": saved["by_kind"],
        "saved_tensors": saved["saved_tensors"],
        "trainable_parameters": int(sum(p.numel() for p in params)),
        "trainable_parameter_bytes": int(sum(p.numel() * p.element_size() for p in params)),
        "gradient_bytes": int(sum(p.numel() * p.element_size() for p in params)),
        "optimizer_state_bytes": optimizer_state_bytes(inner),
        "total_parameters": int(sum(p.numel() for p in engine.module.parameters())),
    }
    if engine.device.type == "cuda":
        record["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(engine.device))
    return record
