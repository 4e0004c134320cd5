"""Loading causal LMs by hub id or local path, with a clear message when one is not available."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

from analysis.errors import PipelineError

# transformers, tokenizers, torch and safetensors are imported inside the functions that use them: a
# tokenize job reads tokenizer.json with the tokenizers library alone (load_encoding_tokenizer), and
# the plan, the resources and the tables import this module without loading any model.

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


def token_decoder(name: str) -> Callable[[int], str]:
    """Token id -> its text as the model's tokenizer decodes it alone (the token tables' labels)."""
    tokenizer = load_tokenizer(name)
    return lambda token_id: tokenizer.decode([token_id])


#: Tokenizer classes that transformers builds from ``tokenizer.json`` exactly as the file says, with
#: no class-specific normaliser, pre-tokenizer or added tokens (GPT2Tokenizer, LlamaTokenizer, ... may
#: change those from ``tokenizer_config.json``: such tokenizers always load through transformers).
VERBATIM_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}
#: ``tokenizer_config.json`` keys that do not change how text is encoded.
_ENCODING_NEUTRAL_KEYS = {
    "backend", "tokenizer_class", "model_max_length", "clean_up_tokenization_spaces", "model_input_names",
    "padding_side", "truncation_side", "added_tokens_decoder", "extra_special_tokens", "is_local",
    "local_files_only",
    "bos_token", "eos_token", "unk_token", "pad_token", "cls_token", "sep_token", "mask_token",
}


class FileTokenizer:
    """A ``tokenizer.json`` read by the tokenizers library alone, for jobs that only encode text.

    Importing transformers (and with it torch) takes about 2.5 s, which is most of a small
    ``tokenize_domain`` job. The attributes are those of a transformers fast tokenizer that the
    encoding code uses: ``backend_tokenizer``, ``eos_token_id``, ``bos_token_id`` and ``len()``.
    """

    def __init__(self, backend, eos_token_id: int, bos_token_id: int | None):
        self.backend_tokenizer = backend
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)


def _token_content(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _file_tokenizer(name: str) -> FileTokenizer | None:
    """``name``'s tokenizer read from its ``tokenizer.json`` when transformers would encode with that
    file as it stands (a local directory, a class of ``VERBATIM_TOKENIZER_CLASSES``, only
    encoding-neutral settings, an EOS token in the file); else ``None``."""
    directory = Path(name)
    config_path, file_path = directory / "tokenizer_config.json", directory / "tokenizer.json"
    if not (config_path.is_file() and file_path.is_file()) or (directory / "special_tokens_map.json").exists():
        return None
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") not in VERBATIM_TOKENIZER_CLASSES or set(config) - _ENCODING_NEUTRAL_KEYS:
        return None
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(file_path))
    added = {token.content for token in backend.get_added_tokens_decoder().values()}
    declared = [_token_content(t) for t in config.get("added_tokens_decoder", {}).values()]
    if any(content not in added for content in declared):
        return None  # transformers would add tokens the file does not hold
    ids = {key: backend.token_to_id(_token_content(config[key])) if config.get(key) else None
           for key in ("eos_token", "bos_token")}
    if ids["eos_token"] is None:
        return None  # load_tokenizer says why
    return FileTokenizer(backend, ids["eos_token"], ids["bos_token"])


def load_encoding_tokenizer(name: str):
    """A tokenizer for jobs that only turn text into ids: ``FileTokenizer`` where its encoding is that
    of transformers (``_file_tokenizer``), else ``load_tokenizer``'s. Same ids either way (tested)."""
    check_name(name)
    return _file_tokenizer(name) or load_tokenizer(name)


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


def save_delta(model, names: list[str], directory: Path, metadata: dict) -> None:
    """Save the named parameters of ``model`` to ``directory/delta.safetensors`` (rule adapt's output
    for every mode but ``full``), ``metadata`` as JSON in the file's header."""
    from safetensors.torch import save_file

    state = model.state_dict()
    missing = [n for n in names if n not in state]
    if missing:
        raise PipelineError(f"delta names {missing[:3]} are not parameters of the merged model (a bug)")
    save_file({n: state[n].detach().contiguous().cpu() for n in names}, str(directory / "delta.safetensors"),
              metadata={"json": json.dumps(metadata)})


def apply_delta(model, delta_dir: str | Path):
    """Load ``delta.safetensors`` into a base model (in place); returns the model."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(delta_dir) / "delta.safetensors"))
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise PipelineError(f"{delta_dir}: delta keys not in the model: {result.unexpected_keys[:3]}")
    return model


def enable_gradient_checkpointing(model) -> None:
    """Hugging Face activation checkpointing of every block (non-reentrant, so frozen inputs work)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise PipelineError(f"gradient_checkpointing: {type(base).__name__} does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.config.use_cache = False
