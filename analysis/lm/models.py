"""Loading causal LMs by hub id or local path, with a clear message when one is not available."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from analysis.errors import PipelineError

log = logging.getLogger(__name__)

#: Checkpoints whose hub format does not load with transformers: AutoModelForCausalLM would
#: silently build a randomly initialised model. Their converted `-hf` siblings are the right ones.
OLD_FORMAT = {
    "allenai/OLMo-1B": "allenai/OLMo-1B-hf",
    "allenai/OLMo-7B": "allenai/OLMo-7B-hf",
}


class ModelLoadError(PipelineError):
    """A configured model cannot be loaded as a causal LM."""


def _offline_message(name: str, exc: BaseException) -> str:
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    short = name.rstrip("/").split("/")[-1]
    return (
        f"cannot load causal LM {name!r} ({reason}).\n"
        "If this machine is offline, download it where the hub is reachable "
        f"(`hf download {name} --local-dir /models/{short}`), copy that directory here and set the "
        "model's name_or_path to it; or copy a filled HF_HOME cache and run with HF_HUB_OFFLINE=1."
    )


def _local_only(name: str) -> bool | None:
    """Whether to skip the hub: for a local directory, and when HF_HUB_OFFLINE is set (read now,
    not when huggingface_hub was imported)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return True if Path(name).is_dir() or offline else None


def check_name(name: str) -> None:
    if name in OLD_FORMAT:
        raise ModelLoadError(
            f"model {name!r} is in the original OLMo format, which AutoModelForCausalLM loads with "
            f"random weights (its keys do not match); use {OLD_FORMAT[name]!r}, the converted checkpoint"
        )


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    check_name(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=_local_only(name))
    except Exception as exc:  # hub client errors come in many types
        raise ModelLoadError(_offline_message(name, exc)) from None
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"tokenizer of {name!r} has no EOS token, which separates documents")
    return tokenizer


def load_causal_lm(name: str, dtype: str = "float32"):
    """``AutoModelForCausalLM`` weights of ``name``; refuses weights that did not load."""
    import torch
    from transformers import AutoModelForCausalLM

    check_name(name)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            name, dtype=torch_dtype, local_files_only=_local_only(name), output_loading_info=True
        )
    except Exception as exc:
        raise ModelLoadError(_offline_message(name, exc)) from None
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = [k for k in info.get("missing_keys", []) if k not in tied]
    if missing:
        raise ModelLoadError(
            f"model {name!r}: {len(missing)} weights were not in the checkpoint and would be random "
            f"(e.g. {', '.join(sorted(missing)[:3])}); is this the right checkpoint format?"
        )
    return model
