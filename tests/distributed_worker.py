"""Processes for the multi-rank tests (importable, so spawn can start them)."""

from __future__ import annotations

import os
import time

import numpy as np
import torch


def linger_and_close(rank: int, port: int, lingering_rank: int) -> None:
    """One collective, then every rank ends, ``lingering_rank`` half a second after the others."""
    import torch.distributed as dist

    from analysis.lm.train import close_process_group

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    dist.all_reduce(torch.ones(1000))
    if rank == lingering_rank:
        time.sleep(0.5)
    close_process_group()
    assert not dist.is_initialized()


def train_rank(rank: int, world: int, port: int, model_dir: str, output: str, micro_batch: int, checkpoints: str,
               setting: dict | None = None):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from analysis.lm.models import load_causal_lm
    from analysis.lm.train import TrainSettings, close_process_group, train

    torch.set_num_threads(1)
    model = load_causal_lm(model_dir)
    for module in model.modules():  # dropout masks depend on the batch shape, which differs
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 200, (40, 16))
    settings = TrainSettings(learning_rate=1e-3, micro_batch_size=micro_batch, curve_points=2, seed=3,
                             **(setting or {}))
    result = train(model, blocks, rng.permutation(40), {"valid": blocks[:4]}, settings, checkpoint_dir=checkpoints,
                   fingerprint="ranks", progress=False)
    if rank == 0:
        if result["module"] is None:  # ZeRO-3: the whole tensors, gathered on rank 0
            torch.save(result["state_dict"], output)
        else:
            torch.save({k: v.detach() for k, v in result["module"].state_dict().items()}, output)
        import json

        with open(f"{output}.memory.json", "w") as f:
            json.dump(result["memory"], f)
    close_process_group()
