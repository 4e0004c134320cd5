"""Refusing, when the workflow starts, an adaptation mode that cannot apply to a configured model.

``bias`` on a model without bias parameters (LLaMA, OLMo), ``sparse`` whose scheme names layers the
model does not have or trains nothing, ``last`` with more blocks than the model has, ``lora`` with no
target module present: each would fail in its adapt job, after the tokenize and zero-shot jobs of
every domain had spent their time. ``check_modes`` builds each model on the meta device (no weights)
and applies each mode's scheme, and raises one ``ConfigError`` line naming the model and the mode.

A check costs the import of torch and transformers (3-4 s), so a passed one is remembered in a small
cache keyed by what decides it (the model's config, the mode, its scheme options, the transformers
version): ``$XDG_CACHE_HOME/adaptation-odyssey/mode-checks`` (``~/.cache`` by default).
``auto_sparse`` (the search chooses what trains) and ``full`` always apply.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Mapping

from analysis.config import schema_defaults
from analysis.errors import ConfigError, PipelineError
from analysis.io import user_cache_dir

log = logging.getLogger(__name__)

ALWAYS_APPLY = ("full", "auto_sparse")


def _config_identity(spec: Mapping) -> str | None:
    """What decides a model's architecture, readable without loading it: its config.json, a GGUF
    file's path, size and time, the pretrain shape, or the hub id (for a known or cached model)."""
    name = spec["name_or_path"]
    if "gguf" in spec:
        from analysis.lm import gguf

        path = gguf.resolve(spec["gguf"], "gguf")
        stat = path.stat()
        return f"gguf:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if "pretrain" in spec:
        return "pretrain:" + json.dumps([spec["pretrain"], spec["context_length"]], sort_keys=True)
    config = Path(name) / "config.json"
    if config.is_file():
        return "dir:" + hashlib.sha256(config.read_bytes()).hexdigest()
    return f"hub:{name}"


def _key(identity: str, mode: str, options: Mapping) -> str:
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        version = "none"
    blob = json.dumps([identity, mode, options, version], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def model_modes(config: Mapping) -> dict[str, list[str]]:
    """Every mode each model is adapted in: the main grid's, and the join ablation's for its models."""
    adaptation = config["adaptation"]
    modes = {name: list(adaptation["modes"]) for name in config["models"]}
    for name in adaptation["join_ablation"]["models"]:
        if adaptation["join_ablation"]["mode"] not in modes[name]:
            modes[name].append(adaptation["join_ablation"]["mode"])
    return modes


def check_modes(config: Mapping, use_cache: bool = True) -> None:
    """Raise ``ConfigError`` for the first (model, mode) of the config that cannot train anything.

    A model whose config is not available here (a hub id, offline, not among the plan's known
    models) is not checked: its plan job (rule plan) checks it before its adapt jobs.
    """
    from analysis.lm import plan

    schemes = config["adaptation"]["schemes"]
    pending = []
    for name, modes in model_modes(config).items():
        spec = config["models"][name]
        identity = _config_identity(spec)
        for mode in modes:
            if mode in ALWAYS_APPLY:
                continue
            key = _key(identity, mode, schemes.get(mode, {}))
            if use_cache and (user_cache_dir() / "mode-checks" / key).exists():
                continue
            pending.append((name, spec, mode, key))
    if not pending:
        return
    from analysis.selection.schemes import Scheme, SchemeError, trained_elements

    plan.declare_built_models(config)
    for name, spec, mode, key in pending:
        try:
            model_config = plan.model_config(spec["name_or_path"])
        except PipelineError as exc:  # offline, unknown hub id: the plan job checks it later
            log.info("models.%s: mode %s not checked before the run (%s)", name, mode, str(exc).splitlines()[0])
            continue
        model = plan.meta_model(model_config)
        fix = f"remove {mode!r} from adaptation.modes" + (
            f" or change adaptation.schemes.{mode}" if mode in schema_defaults("adaptation.schemes") else "")
        try:
            trained = trained_elements(model, Scheme.from_config(mode, schemes))
        except SchemeError as exc:
            reason = str(exc).removeprefix(f"mode {mode!r}: ")
            raise ConfigError(f"models.{name} ({type(model).__name__}): mode {mode!r} cannot apply: {reason}; "
                              f"{fix}") from None
        if trained == 0:
            raise ConfigError(f"models.{name} ({type(model).__name__}): mode {mode!r} would train nothing; {fix}")
        if use_cache:
            try:
                (user_cache_dir() / "mode-checks").mkdir(parents=True, exist_ok=True)
                (user_cache_dir() / "mode-checks" / key).write_text(f"{name} {mode} {type(model).__name__}\n")
            except OSError:  # a read-only home: the check is repeated next time, nothing else changes
                pass
