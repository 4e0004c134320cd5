"""Parameter selection: which parameters a mode trains, applied to any block-structured model.

A scheme is a few printable fields, like tiny-training's (``n_bias_update``, ``manual_weight_idx``,
``weight_update_ratio``):

* ``full``: every parameter.
* ``bias``: every bias (TinyTL, BitFit).
* ``last``: the last ``blocks`` blocks and the head (final norm and output layer; an output layer
  tied to the input embeddings stays frozen, see ``_head_parameters``).
* ``norm_last``: every normalisation layer plus the last ``blocks`` blocks (the BN+Last analogue).
* ``lora``: low-rank adapters (peft) on ``target_modules``; the base is frozen.
* ``sparse``: biases of the last ``n_bias_update`` blocks, plus, for each layer named in
  ``weight_update``, a fraction of its weight: the columns that read the first ``ratio`` of its input
  channels. That fraction is a separate parameter fed with only those input channels, so backward
  keeps ``ratio`` of the layer's input, not all of it (a frozen weight keeps none; PyTorch saves a
  matmul input only when the weight needs a gradient).

Layer names in ``weight_update`` are relative to the model's block list: ``"-1.mlp.c_fc"`` is
``mlp.c_fc`` of the last block, ``"3.attn.c_attn"`` of block 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from analysis.config import schema_defaults
from analysis.errors import PipelineError

# PEFT is imported only for mode lora (_apply_lora): its import takes seconds (4.9 s measured beside
# torch and transformers already loaded) that every other adapt job would pay.

MODES = ("full", "bias", "last", "norm_last", "lora", "sparse")


class SchemeError(PipelineError):
    """A scheme that cannot be applied to this model."""


@dataclass
class Scheme:
    mode: str
    blocks: int = 1
    n_bias_update: int = 0  # for a scheme built in code; from_config gives the config's (schema: 2)
    weight_update: dict[str, float] = field(default_factory=dict)
    lora: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, mode: str, schemes: dict) -> "Scheme":
        if mode not in MODES:
            raise SchemeError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        # What the config leaves out of adaptation.schemes.<mode> takes the schema's default there.
        options = {**schema_defaults("adaptation.schemes").get(mode, {}), **schemes.get(mode, {})}
        if mode in ("last", "norm_last"):
            return cls(mode, blocks=options["blocks"])
        if mode == "lora":
            return cls(mode, lora=options)
        if mode == "sparse":
            return cls(mode, n_bias_update=options["n_bias_update"], weight_update=dict(options["weight_update"]))
        return cls(mode)

    def describe(self) -> dict:
        return {"mode": self.mode, "blocks": self.blocks, "n_bias_update": self.n_bias_update,
                "weight_update": self.weight_update, "lora": self.lora}


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's repeated blocks: the longest ModuleList whose children share one class."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise SchemeError(f"{type(model).__name__} has no list of repeated blocks to select from")
    return best


def is_norm(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or "norm" in name


def head_is_tied(model: nn.Module) -> bool:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return output is not None and inputs is not None and output.weight is inputs.weight


def _head_parameters(model: nn.Module, blocks_name: str) -> list[nn.Parameter]:
    """The final norm (modules after the blocks with 'norm' in their name) and the output layer.

    An output layer tied to the input embeddings (GPT-2) is left frozen: training it trains the
    input embeddings, whose gradient needs backward through every block, so every activation
    would be kept and ``last`` would cost nearly as much memory as ``full``.
    """
    params = []
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and not head_is_tied(model):
        params += list(output.parameters())
    prefix = blocks_name.rsplit(".", 1)[0] if "." in blocks_name else ""
    for name, module in model.named_modules():
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if parent == prefix and is_norm(module) and not name.startswith(blocks_name):
            params += list(module.parameters())
    return params


class PartialUpdate(nn.Module):
    """A frozen linear layer plus a trainable correction on its first ``k`` input channels.

    ``y = base(x) + x[..., :k] @ delta^T``; the effective weight is the base weight with ``delta``
    added to the columns of those channels. Only ``x[..., :k]`` (a copy) is saved for backward.
    Works for ``nn.Linear`` (weight ``(out, in)``) and GPT-2's ``Conv1D`` (weight ``(in, out)``).
    """

    def __init__(self, base: nn.Module, ratio: float):
        super().__init__()
        self.base = base
        self.transposed = type(base).__name__ == "Conv1D"
        in_features = base.weight.shape[0] if self.transposed else base.weight.shape[1]
        out_features = base.weight.shape[1] if self.transposed else base.weight.shape[0]
        self.k = max(1, math.ceil(ratio * in_features))
        self.delta = nn.Parameter(torch.zeros(out_features, self.k, dtype=base.weight.dtype,
                                              device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(x[..., : self.k].contiguous(), self.delta)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base layer with the correction added to its weight."""
        if self.transposed:
            self.base.weight[: self.k, :] += self.delta.T
        else:
            self.base.weight[:, : self.k] += self.delta
        return self.base


def _resolve_layer(model: nn.Module, blocks_name: str, blocks: nn.ModuleList, spec: str) -> str:
    index, _, rest = spec.partition(".")
    try:
        i = int(index)
        block = blocks[i]
    except (ValueError, IndexError):
        raise SchemeError(
            f"layer {spec!r}: {index!r} is not a block index of {blocks_name} (0..{len(blocks) - 1}, or negative)"
        ) from None
    i = i % len(blocks)
    names = dict(block.named_modules())
    if rest not in names or not hasattr(names[rest], "weight") or names[rest].weight.dim() != 2:
        linear = sorted(n for n, m in block.named_modules() if getattr(m, "weight", None) is not None
                        and m.weight.dim() == 2)
        raise SchemeError(f"layer {spec!r}: block {i} has no linear layer {rest!r}; it has {', '.join(linear)}")
    return f"{blocks_name}.{i}.{rest}"


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def apply_scheme(model: nn.Module, scheme: Scheme) -> nn.Module:
    """Freeze what ``scheme`` does not train; returns the model to train (a peft model for lora)."""
    if scheme.mode not in MODES:
        raise SchemeError(f"unknown mode {scheme.mode!r}; expected one of {', '.join(MODES)}")
    if scheme.mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if scheme.mode == "lora":
        return _apply_lora(model, scheme.lora)

    for p in model.parameters():
        p.requires_grad_(False)
    blocks_name, blocks = block_list(model)
    trainable: list[nn.Parameter] = []
    if scheme.mode == "bias":
        trainable = [p for n, p in model.named_parameters() if n.endswith("bias")]
        if not trainable:
            raise SchemeError(f"mode 'bias': {type(model).__name__} has no bias parameters")
    elif scheme.mode in ("last", "norm_last"):
        if scheme.blocks > len(blocks):
            raise SchemeError(f"mode {scheme.mode!r}: blocks = {scheme.blocks} but the model has {len(blocks)}")
        for block in list(blocks)[-scheme.blocks:]:
            trainable += list(block.parameters())
        if scheme.mode == "last":
            trainable += _head_parameters(model, blocks_name)
        else:
            trainable += [p for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)]
    elif scheme.mode == "sparse":
        if scheme.n_bias_update > len(blocks):
            raise SchemeError(f"mode 'sparse': n_bias_update = {scheme.n_bias_update} but the model has {len(blocks)} blocks")
        if scheme.n_bias_update:
            for block in list(blocks)[-scheme.n_bias_update:]:
                trainable += [p for n, p in block.named_parameters() if n.endswith("bias")]
        for spec, ratio in scheme.weight_update.items():
            name = _resolve_layer(model, blocks_name, blocks, spec)
            layer = model.get_submodule(name)
            if ratio >= 1.0:
                trainable.append(layer.weight)
            else:
                wrapper = PartialUpdate(layer, ratio)
                _replace(model, name, wrapper)
                trainable.append(wrapper.delta)
        if not trainable:
            raise SchemeError("mode 'sparse': the scheme trains nothing (n_bias_update = 0, no weight_update)")
    for p in trainable:
        p.requires_grad_(True)
    return model


def lora_targets(model: nn.Module, options: dict) -> list[str]:
    """The configured target_modules that ``model`` has; none is a ``SchemeError``."""
    wanted = options.get("target_modules", ["c_attn", "q_proj", "v_proj"])
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in wanted if t in present]
    if not targets:
        raise SchemeError(f"mode 'lora': none of target_modules {wanted} is a module of {type(model).__name__}")
    return targets


def trained_elements(model: nn.Module, scheme: Scheme) -> int:
    """Elements ``scheme`` would train on ``model`` (a meta-device model will do); a scheme that cannot
    apply raises ``SchemeError``. LoRA's adapters are not counted (it is checked without peft, whose
    import costs seconds): its targets are."""
    if scheme.mode == "lora":
        lora_targets(model, scheme.lora)
        return 1
    trained = apply_scheme(model, scheme)
    return sum(p.numel() for p in {id(p): p for p in trained.parameters() if p.requires_grad}.values())


def _apply_lora(model: nn.Module, options: dict) -> nn.Module:
    targets = lora_targets(model, options)
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=options.get("rank", 8), lora_alpha=options.get("alpha", 16),
                        lora_dropout=options.get("dropout", 0.0), target_modules=targets,
                        fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in model.modules()),
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merged_model(model: nn.Module) -> nn.Module:
    """The plain base architecture with every trained change folded into its weights."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    for name, module in list(model.named_modules()):
        if isinstance(module, PartialUpdate):
            _replace(model, name, module.merged())
    return model


def trainable_summary(model: nn.Module) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    count = sum(p.numel() for p in params)
    return {"trainable_parameters": count, "total_parameters": total,
            "trainable_fraction": count / total if total else 0.0,
            "trainable_bytes": sum(p.numel() * p.element_size() for p in params)}


def touched_parameters(model: nn.Module) -> list[str]:
    """Names, in the plain base model, of the parameters a scheme changes (the delta's keys)."""
    names = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("base_model.model."):  # peft: a LoRA pair changes the wrapped weight
            name = name[len("base_model.model."):]
            if ".lora_" in name:
                name = name.split(".lora_")[0] + ".weight"
            name = name.replace(".base_layer.", ".")
        if name.endswith(".delta"):  # PartialUpdate: a slice of the wrapped weight
            name = name[: -len(".delta")] + ".weight"
        names.append(name.replace(".base.", "."))
    return list(dict.fromkeys(names))
