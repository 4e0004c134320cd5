"""A training process for tests/test_lm.py's data-parallel test (importable, so spawn can start it)."""

from __future__ import annotations

import os

import numpy as np
import torch


def train_rank(rank: int, world: int, port: int, model_dir: str, output: str, micro_batch: int, checkpoints: str,
               setting: dict | None = None):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from analysis.lm.models import load_causal_lm
    from analysis.lm.train import TrainSettings, train

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
