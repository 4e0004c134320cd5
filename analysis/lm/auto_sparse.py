"""Mode auto_sparse for causal LMs: the scheme is chosen by analysis.selection.search.

The LM-specific parts are small: the candidate layers (every linear layer of the last
``search_blocks`` blocks), ``gain`` (a few optimizer steps of one candidate with the same training
loop as the real run, from the same base weights and data, scored on validation blocks) and
``memory`` (bytes saved for backward on one micro-batch, measured, plus gradient and AdamW state of
the trainable parameters).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
from typing import Mapping

import numpy as np
import torch

from analysis.lm.loss import forward_loss
from analysis.lm.train import TrainSettings, train
from analysis.selection.memory import saved_for_backward
from analysis.selection.schemes import Scheme, apply_scheme, block_list
from analysis.selection.search import MIB, SearchSpace, SparseScheme, contribution_analysis, evolutionary_search

log = logging.getLogger(__name__)


def linear_layers(block: torch.nn.Module) -> list[str]:
    return [name for name, m in block.named_modules()
            if name and getattr(m, "weight", None) is not None and m.weight.dim() == 2
            and type(m).__name__ in ("Linear", "Conv1D")]


def choose_scheme(base_model, blocks: np.ndarray, order: np.ndarray, eval_blocks: np.ndarray,
                  settings: TrainSettings, options: Mapping, seed: int) -> tuple[Scheme, dict]:
    _, block_modules = block_list(base_model)
    n_blocks = len(block_modules)
    search_blocks = min(options["search_blocks"], n_blocks)
    layers = [f"{-j}.{name}" for j in range(search_blocks, 0, -1) for name in linear_layers(block_modules[-j])]
    # A model without biases (LLaMA, OLMo) has no bias units to search: its schemes update weights only.
    has_bias = any(name.endswith("bias") for block in block_modules for name, _ in block.named_parameters())
    space = SearchSpace(n_blocks=n_blocks if has_bias else 0, layers=layers, ratios=list(options["ratios"]))
    per_step = settings.micro_batch_size * settings.gradient_accumulation_steps
    probe_order = order[: options["contribution_steps"] * per_step]
    probe_settings = dataclasses.replace(settings, curve_points=2, checkpoint_every=10**9)
    micro_batch = torch.as_tensor(blocks[order[: settings.micro_batch_size]], dtype=torch.long)

    def build(scheme: SparseScheme):
        return apply_scheme(copy.deepcopy(base_model), Scheme("sparse", n_bias_update=scheme.n_bias_update,
                                                             weight_update=dict(scheme.weight_update)))

    def gain(scheme: SparseScheme) -> float:
        with tempfile.TemporaryDirectory() as checkpoints:
            result = train(build(scheme), blocks, probe_order, {"valid": eval_blocks}, probe_settings,
                           checkpoint_dir=checkpoints, fingerprint="probe", progress=False)
        return result["curves"][0]["valid_loss"] - result["curves"][-1]["valid_loss"]

    def memory(scheme: SparseScheme) -> int:
        model = build(scheme)
        model.train()
        saved = saved_for_backward(model, lambda: forward_loss(model, micro_batch, settings.loss))
        trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        return saved["saved_bytes"] + 3 * trainable  # gradient and two AdamW moments

    log.info("auto_sparse: contribution analysis of %d units (%d steps each)",
             n_blocks + len(layers) * len(space.ratios), options["contribution_steps"])
    contributions = contribution_analysis(space, gain)
    search = evolutionary_search(space, contributions, memory, int(options["budget_mib"] * MIB),
                                 population=options["population"], generations=options["generations"], seed=seed)
    chosen = search["scheme"]
    record = {"budget_mib": options["budget_mib"], "space": dataclasses.asdict(space),
              "contributions": contributions.records, **search}
    return Scheme("sparse", n_bias_update=chosen["n_bias_update"], weight_update=chosen["weight_update"]), record
