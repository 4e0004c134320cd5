"""Rule adapt: one epoch of continued pretraining of one model on one domain in one mode.

Outputs, in ``results/adapted/<model>/<join policy>/<mode>/<domain>/``:

* ``weights/``: for ``full`` the adapted model (and tokenizer) in HF format; for the other modes only
  ``delta.safetensors``, the parameters the scheme changed at their adapted values (LoRA and partial
  updates folded into the weights they modify), applied with ``models.apply_delta``;
* ``curves.tsv`` and ``curves.png``: validation, test and seen-first train loss along the epoch;
* ``memory.json``: bytes saved for backward (by kind of operation), trainable, gradient and
  optimizer-state bytes, GPU peak;
* ``metrics.json``: tokens seen and dropped, steps, wall time, tokens/s, the scheme and settings;
* ``deepspeed_config.json``: the DeepSpeed config the engine ran with;
* ``scheme.json``: the scheme that was trained; for ``auto_sparse`` also the candidate
  contributions, the measured memory of every scheme considered and the search history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from analysis.config import settings_from
from analysis.errors import PipelineError
from analysis.io import atomic_dir, derive_seed, write_json
from analysis.runner import restores_job_settings

log = logging.getLogger(__name__)


def eval_sets(splits: Mapping[str, np.ndarray], order: np.ndarray, max_blocks: int, seen_first_fraction: float) -> dict:
    """Blocks scored along the curve: valid, test, and the train blocks the epoch visits first."""
    first = order[: max(1, math.ceil(seen_first_fraction * len(order)))][:max_blocks]
    sets = {"train_first": splits["train"][np.sort(first)]}
    for name in ("valid", "test"):
        if len(splits[name]):
            sets[name] = splits[name][:max_blocks]
    return sets


def _dtype_name(state_dict: Mapping) -> str:
    import torch  # inside, as in adapt(): importing this module should not cost torch's start-up

    dtypes = {t.dtype for t in state_dict.values() if t.is_floating_point()}
    return "bfloat16" if dtypes == {torch.bfloat16} else "float32"


def _tied_keys(model) -> set[str]:
    """Parameter names that share storage with an earlier one (a tied LM head)."""
    first, tied = set(), set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.data_ptr() in first:
            tied.add(name)
        first.add(tensor.data_ptr())
    return tied


@restores_job_settings()
def adapt(
    *,
    model_key: str,
    model_spec: Mapping,
    mode: str,
    scheme_options: Mapping,
    train_policy: str = "keep",
    domain: str,
    tokens: str | Path,
    output_dir: str | Path,
    checkpoint_dir: str | Path,
    adaptation: Mapping,
    seed: int,
    threads: int = 2,
) -> dict:
    """Train ``model_spec`` for one epoch on ``domain``'s train stream (``tokens``, tokenised under
    the join policy ``train_policy``) in ``mode`` and write the outputs listed in the module docstring to ``output_dir``.

    The epoch visits each block of ``context_length`` tokens once, in an order shared by every mode;
    the scheme of ``mode`` (``scheme_options``; ``auto_sparse`` searches one) sets what trains.
    ``adaptation`` is the config section of that name (curve points, checkpoints, loss, the plan
    check). Checkpoints go to ``checkpoint_dir``; a rerun with the same settings resumes from the
    newest. Under ``deepspeed --num_gpus N`` every rank calls this and rank 0 writes the outputs.
    Torch runs on ``threads`` threads, as before the call afterwards.
    Returns the metrics (``metrics.json``) on rank 0, ``{}`` elsewhere.
    """
    # torch, transformers, DeepSpeed and pandas are imported here, not at the top: importing this
    # module (the CLI, the tables, the tests) should not cost their seconds of start-up.
    import pandas as pd
    import torch

    from analysis.lm.data import epoch_order, load_split, pack_blocks
    from analysis.lm.models import load_causal_lm, load_tokenizer, save_delta
    from analysis.lm.train import TrainSettings, resolve_precision, train
    from analysis.selection.schemes import Scheme, apply_scheme, merged_model, touched_parameters, trainable_summary

    start = time.perf_counter()
    scheme = None if mode == "auto_sparse" else Scheme.from_config(mode, scheme_options)
    block_size = model_spec["context_length"]
    splits, dropped = {}, {}
    for split in ("train", "valid", "test"):
        stream = load_split(tokens, split)
        splits[split], dropped[split] = pack_blocks(stream, block_size)
    if len(splits["train"]) == 0:
        raise PipelineError(
            f"domain {domain!r}: its train split has {dropped['train']} tokens, fewer than one block of "
            f"models.{model_key}.context_length = {block_size}"
        )
    # One order per (model, domain), shared by every mode, so modes differ only in what they train.
    order = epoch_order(len(splits["train"]), derive_seed(seed, "order", model_key, domain))
    # adaptation.max_train_tokens: the first blocks of that order (a quick run, not one epoch).
    cap = adaptation.get("max_train_tokens")
    blocks_available = len(order)
    if cap is not None:
        order = order[: max(1, cap // block_size)]
        log.info("max_train_tokens = %d: training on %d of %d blocks (%.1f%% of the epoch)", cap, len(order),
                 blocks_available, 100 * len(order) / blocks_available)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(model_spec["dtype"], device)
    # The model's section (learning rate, batch, ZeRO, ...) and the adaptation section's curve and
    # checkpoint settings; the precision resolved for this device.
    settings = settings_from(
        TrainSettings, model_spec, precision=precision, curve_points=adaptation["curve_points"],
        checkpoint_every=adaptation["checkpoint_every"], loss=adaptation.get("loss", "model"),
        seed=derive_seed(seed, "steps", model_key, domain),
    )
    if settings.offload_optimizer:  # a missing compiled op fails here, in one line, before any weight loads
        from analysis.lm.ops import load_cpu_adam

        load_cpu_adam()
    if adaptation.get("plan", {}).get("check", False):
        from analysis.lm.plan import check_job

        planned = check_job(model_key, model_spec, mode, scheme_options, settings.loss, adaptation["plan"],
                            int(os.environ.get("WORLD_SIZE", "1")))
        log.info("memory plan: %s: %.2f GB device, %.2f GB host per process (fits)", planned.setting.describe(),
                 planned.device_bytes / 1e9, planned.host_bytes / 1e9)
    # Loaded in the training precision: DeepSpeed would cast a float32 copy anyway, after holding it.
    model = load_causal_lm(model_spec["name_or_path"], dtype=precision)
    sets = eval_sets(splits, order, adaptation["curve_max_blocks"], adaptation["seen_first_fraction"])
    search = None
    if mode == "auto_sparse":
        from analysis.lm.auto_sparse import choose_scheme

        valid = sets.get("valid", sets["train_first"])
        scheme, search = choose_scheme(model, splits["train"], order, valid, settings,
                                       scheme_options["auto_sparse"], derive_seed(seed, "search", model_key, domain))
    # A scheme that adds weights (LoRA's adapters) draws them from torch's global generator: seeded
    # here from the run's seed, they do not depend on what ran before in this process (the plan
    # check, an earlier call).
    torch.manual_seed(derive_seed(seed, "init", model_key, domain))
    model = apply_scheme(model, scheme)
    touched = touched_parameters(model)
    summary = trainable_summary(model)
    log.info("%s / %s / %s: %d of %d parameters trainable (%.3f%%)", model_key, mode, domain,
             summary["trainable_parameters"], summary["total_parameters"], 100 * summary["trainable_fraction"])
    fingerprint = hashlib.sha256(json.dumps(
        [model_spec, mode, scheme.describe(), domain, train_policy, dict(adaptation), seed,
         Path(tokens).stat().st_size], sort_keys=True, default=str).encode()).hexdigest()

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))  # under `deepspeed --num_gpus N`, rank 0 writes the outputs
    if rank == 0:
        write_json(output_dir / "scheme.json", {"mode": mode, "scheme": scheme.describe(), "search": search})
    result = train(
        model, splits["train"], order, sets, settings, checkpoint_dir=checkpoint_dir, fingerprint=fingerprint,
        output_config=output_dir / "deepspeed_config.json",
    )

    if rank != 0:
        return {}
    module = result.pop("module")
    state_dict = result.pop("state_dict")
    if module is None:  # ZeRO-3: the whole trained tensors, gathered on rank 0, into a plain model
        module = apply_scheme(load_causal_lm(model_spec["name_or_path"], dtype=_dtype_name(state_dict)), scheme)
        missing, unexpected = module.load_state_dict(state_dict, strict=False)
        if unexpected or [k for k in missing if k not in _tied_keys(module)]:
            raise PipelineError(f"ZeRO-3 state dict does not match the model: missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]} (a bug)")
        del state_dict
    trained = merged_model(module)
    with atomic_dir(output_dir / "weights") as tmp:
        if mode == "full":
            trained.save_pretrained(tmp)
            load_tokenizer(model_spec["name_or_path"]).save_pretrained(tmp)
        else:
            save_delta(trained, touched, tmp, {"base": model_spec["name_or_path"], "mode": mode,
                                               "scheme": scheme.describe()})
    curves = result.pop("curves")
    pd_curves = pd.DataFrame(curves)
    from analysis.tables.common import write_table
    from analysis.tables.curves import curve_figure

    write_table(pd_curves, output_dir / "curves.tsv")
    curve_figure(curves, f"{model_key}, {mode}, {domain} (trained on join policy {train_policy})",
                 output_dir / "curves.png")
    memory = {"model": model_key, "mode": mode, "domain": domain, "train_policy": train_policy, **result.pop("memory"),
              "trainable_fraction": summary["trainable_fraction"]}
    write_json(output_dir / "memory.json", memory)
    metrics = {
        "model": model_key, "mode": mode, "domain": domain, "train_policy": train_policy,
        "base": model_spec["name_or_path"],
        "scheme": scheme.describe(), "delta_parameters": touched if mode != "full" else "all",
        **{k: v for k, v in result.items() if k not in ("deepspeed_config",)},
        "tokens_in_split": {s: int(splits[s].size + dropped[s]) for s in splits},
        "max_train_tokens": cap,
        "train_tokens_available": int(blocks_available * block_size),
        "epoch_fraction": len(order) / blocks_available,
        "tokens_dropped_tail": dropped,
        "tokens_dropped_last_step": int(result["blocks_dropped"] * block_size),
        "precision": precision,
        "seconds": time.perf_counter() - start,
        "final": curves[-1],
        "initial": curves[0],
    }
    write_json(output_dir / "metrics.json", metrics)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    log.info("done: %d steps, %d tokens, %.0f tokens/s; valid loss %.4f -> %.4f", result["steps"],
             result["tokens_trained"], result["tokens_per_second"], curves[0].get("valid_loss", float("nan")),
             curves[-1].get("valid_loss", float("nan")))
    return metrics
