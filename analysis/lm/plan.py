"""The memory plan of an adaptation job, before it is launched: what each ZeRO stage, offload choice
and activation checkpointing costs for a model, and the cheapest configuration that fits a GPU.

**Model states** (bytes per process; P parameters, T of them trained, w bytes per element of the
training precision, 2 for bfloat16 and 4 for float32, N data-parallel processes). What DeepSpeed
allocates, as read from its optimizers (``analysis.lm.train.partition_bytes`` records it per run):

================  =====================================================================
weights           P w; ZeRO-3: P w / N, plus the whole tensors gathered from the partitions and
                  kept for reuse: min(P, R / 2 + 2 x the largest layer) w, R =
                  ``ZERO3_REUSE_DISTANCE``; parameter offload moves P w / N to the host
gradients         T w; ZeRO-2/3: T w / N; ZeRO-2 with optimizer offload keeps none on the device
                  (each gradient goes from the reduction bucket to the host's fp32 partition)
reduce bucket     ZeRO-1/2: ``REDUCE_BUCKET_ELEMENTS`` x w, allocated at every backward whatever the
                  model's size (DeepSpeed's own estimator leaves it out)
offload copies    ZeRO-1/2 with optimizer offload: a buffer of the largest trained tensor in the
                  training precision on the device and one on the host, and on the device the
                  float32 copy of one gradient on its way to the host (when w is not 4)
fp32 master copy  4 T when the precision is not float32 or ZeRO runs (ZeRO-1/2/3 step a flat
                  fp32 partition of their own; stage 0 in float32 steps the weights themselves);
                  / N under ZeRO
fp32 gradients    4 T for bfloat16 (DeepSpeed accumulates and reduces them in fp32), and under
                  optimizer offload (the host's fp32 gradient partition); / N under ZeRO
AdamW moments     8 T; / N under ZeRO
================  =====================================================================

Optimizer offload moves the master copy, the fp32 gradients and the moments to the host (16 T / N
in bfloat16): ZeRO-Offload. At bfloat16 and ZeRO-2 this is DeepSpeed's own accounting,
``estimate_zero2_model_states_mem_needs`` (2 P + 18 P / N without offload, 2 P with it), plus the
bucket and the offload copies, which that estimator leaves out; it is printed beside ours. The
bucket and the copy buffers are read from DeepSpeed's optimizer in every run
(``analysis.lm.train.gradient_buffer_bytes``, tested against the plan).

**Activations** per micro-batch: measured, not modelled. The model's shape is built at depth 1 and
2 with real (random) weights, one training forward of one sequence (times the micro-batch) runs under
``SavedTensorMeter`` (every storage autograd keeps for backward, counted once), with activation
checkpointing on and off; the difference between the two depths is one block's share, and the
full depth is extrapolated from it (the meta device cannot be used: the meter tells storages apart
by address). Under ZeRO-3 DeepSpeed's own linear function keeps every linear input, trained or not,
so partial modes are measured as ``full`` there. Backward needs working memory beyond what is saved:
the loss's float32 logits gradients and, under checkpointing, one recomputed block
(``Activations.backward_working_set``).

**Host memory**: the interpreter with torch, transformers and DeepSpeed (``PROCESS_BASE_BYTES``,
more on a GPU node for the CUDA libraries), the weights as loaded before DeepSpeed moves and
shards them (P w), everything offloaded (under ZeRO-1/2 with two more fp32 copies of the gradient
partition that the offloaded step keeps, measured), DeepSpeed's ZeRO runtime (``ZERO_RUNTIME_BYTES``, measured),
and under ZeRO-3 on rank 0 the gathered whole tensors, the plain model they are loaded into when
the outputs are written and its weights file read through a memory map (3 P w). On a CPU run every
device byte is host memory too.

**Checkpoints**: each holds the trained weights (T w, the whole model for ``full``) and the
optimizer state (master copy and moments, 12 T); the newest is written before the previous one is
removed, so the disk briefly holds two.

**Runtime**: 6 P FLOPs per trained token (forward 2 P, backward 4 P; 8 P with checkpointing,
which repeats the forward), at ``utilisation`` of the GPU's dense bf16 peak (stated, not measured
here), plus the optimizer step on the host under offload (``HOST_ADAM_PARAMS_PER_S``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

from analysis.errors import PipelineError
from analysis.io import write_json
from analysis.lm.models import ModelLoadError, _local_only, _offline_message
from analysis.lm.zero import REDUCE_BUCKET_ELEMENTS, ZERO3_REUSE_DISTANCE, check_zero_settings

# torch, transformers and DeepSpeed, and the project modules that import torch at their top (schemes,
# loss, train, memory; train also imports this module), are imported inside the functions that
# build or measure a model: the plan's arithmetic, the resources of every job and the CLI import this
# module, and should not pay their seconds of start-up.

GB = 1e9
#: Resident memory of the job's interpreter once torch, transformers and DeepSpeed are imported
#: (measured ~0.5 GB here on CPU, benchmarks/memory_plan.py); GPU nodes add the CUDA libraries and context on the host.
PROCESS_BASE_BYTES = {"cpu": 0.5e9, "cuda": 3.0e9}
#: DeepSpeed's ZeRO optimizer and communication objects on the host, at any model size (measured
#: 65-105 MB on the demo model, benchmarks/memory_plan.py).
ZERO_RUNTIME_BYTES = 80e6
#: CUDA context and allocator slack the plan keeps free on the GPU (not in max_memory_allocated).
GPU_RESERVE_BYTES = 2.0e9
#: Dense bf16 peak FLOP/s of common GPUs (vendor data sheets, SXM parts, without sparsity).
GPU_PEAK_FLOPS = {"a100": 312e12, "h100": 989e12, "h200": 989e12, "l40s": 362e12, "a6000": 155e12}
#: Fraction of the peak an adaptation job reaches (stated assumption; benchmarks/gpu_check.py
#: measures it on a GPU).
DEFAULT_UTILISATION = 0.35
#: AdamW updates per second of DeepSpeed's CPU Adam on the host: measured 1.8e9/s on this 2-core
#: machine over 100 M fp32 parameters (benchmarks/training.py --adam-parameters 100000000; torch's
#: foreach AdamW: 2.5e8/s); taken as 1e9/s for a node whose memory bandwidth other jobs share.
HOST_ADAM_PARAMS_PER_S = 1e9


# ------------------------------------------------------------------------------------------------
# The model's shape
# ------------------------------------------------------------------------------------------------

#: Hugging Face configs of the paper's models, so that a plan needs no hub access (their
#: config.json files, abridged to what builds the architecture).
KNOWN_CONFIGS: dict[str, dict] = {
    "gpt2": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
             "n_positions": 1024},
    "gpt2-medium": {"model_type": "gpt2", "n_layer": 24, "n_embd": 1024, "n_head": 16, "vocab_size": 50257,
                    "n_positions": 1024},
    "gpt2-large": {"model_type": "gpt2", "n_layer": 36, "n_embd": 1280, "n_head": 20, "vocab_size": 50257,
                   "n_positions": 1024},
    "gpt2-xl": {"model_type": "gpt2", "n_layer": 48, "n_embd": 1600, "n_head": 25, "vocab_size": 50257,
                "n_positions": 1024},
    "allenai/OLMo-1B-hf": {"model_type": "olmo", "hidden_size": 2048, "intermediate_size": 8192,
                           "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
                           "vocab_size": 50304, "max_position_embeddings": 2048, "tie_word_embeddings": True,
                           "attention_bias": False, "pad_token_id": 1, "eos_token_id": 50279},
    "huggyllama/llama-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                            "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
                            "tie_word_embeddings": False},
}
# SmolLM2-135M (presets/smollm2-quick-hub.yaml): the shape of the GGUF file's config (the instruct
# variant's; the base model's differs only in its special tokens' ids).
KNOWN_CONFIGS["HuggingFaceTB/SmolLM2-135M"] = {
    "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "bos_token_id": 0, "eos_token_id": 0}
KNOWN_CONFIGS["openai-community/gpt2"] = KNOWN_CONFIGS["gpt2"]
KNOWN_CONFIGS["openai-community/gpt2-large"] = KNOWN_CONFIGS["gpt2-large"]
KNOWN_CONFIGS["openai-community/gpt2-xl"] = KNOWN_CONFIGS["gpt2-xl"]
KNOWN_CONFIGS["meta-llama/Llama-2-7b-hf"] = {**KNOWN_CONFIGS["huggyllama/llama-7b"], "max_position_embeddings": 4096}


#: Models the pipeline builds itself (rule pretrain_base), planned before they exist: their shape.
TO_BE_BUILT: dict[str, dict] = {}


def declare_built_models(cfg: Mapping) -> None:
    """The shapes of the config's models with a ``pretrain`` section (a GPT-2 of that shape) or a GGUF
    file (its config, read when asked for)."""
    for spec in cfg["models"].values():
        if "gguf" in spec:
            from analysis.lm import gguf

            TO_BE_BUILT[spec["name_or_path"]] = {"gguf": str(gguf.resolve(spec["gguf"], "gguf"))}
        if "pretrain" in spec:
            shape = spec["pretrain"]
            TO_BE_BUILT[spec["name_or_path"]] = {
                "model_type": "gpt2", "n_layer": shape["n_layer"], "n_embd": shape["n_embd"],
                "n_head": shape["n_head"], "vocab_size": shape["vocab_size"], "n_positions": spec["context_length"],
                "bos_token_id": 0, "eos_token_id": 0}


def model_config(name_or_path: str):
    """The transformers config of a model: a local directory's, a known paper model's (offline), a
    model the pipeline will build, or the hub's (cached, or downloaded where the hub is reachable)."""
    from transformers import AutoConfig

    if Path(name_or_path).is_dir():
        return AutoConfig.from_pretrained(name_or_path)
    known = KNOWN_CONFIGS.get(name_or_path) or TO_BE_BUILT.get(name_or_path)
    if known and "gguf" in known:
        from analysis.lm.gguf import cached_hf_config

        return cached_hf_config(known["gguf"])
    if known:
        spec = dict(known)
        return AutoConfig.for_model(spec.pop("model_type"), **spec)

    try:
        return AutoConfig.from_pretrained(name_or_path, local_files_only=_local_only(name_or_path))
    except Exception as exc:
        raise ModelLoadError(_offline_message(name_or_path, exc)) from None


def with_depth(config, layers: int):
    config = config.__class__.from_dict(config.to_dict())
    config.num_hidden_layers = layers
    return config


@dataclass(frozen=True)
class Shape:
    """Parameter counts of a model and of one adaptation mode on it."""

    total: int
    trainable: int
    layers: int
    largest_layer: int  # parameters of the largest single module (DeepSpeed's "largest layer")
    largest_trained: int  # elements of the largest trained tensor (DeepSpeed's "largest_param_numel")

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total


def meta_model(config, device: str = "meta", dtype=None):
    """The causal LM of ``config``, without weights on the meta device (to count and select)."""
    import torch
    from transformers import AutoModelForCausalLM

    # A model built to be measured draws its weights from a forked generator: the caller's (an adapt
    # job's) random state is left as it was.
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _build(config, mode: str, scheme_options: Mapping, device: str = "meta", dtype=None):
    from analysis.selection.schemes import Scheme, apply_scheme

    return apply_scheme(meta_model(config, device, dtype), Scheme.from_config(mode, scheme_options))


@functools.lru_cache(maxsize=64)
def _shape_cached(name_or_path: str, mode: str, options_key: str) -> Shape:
    config = model_config(name_or_path)
    model = _build(config, mode, json.loads(options_key))
    unique = {id(p): p for p in model.parameters()}.values()  # a tied head counts once
    total = sum(p.numel() for p in unique)
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    largest_trained = max((p.numel() for p in unique if p.requires_grad), default=0)
    return Shape(total=total, trainable=trainable, layers=config.num_hidden_layers, largest_layer=largest,
                 largest_trained=largest_trained)


def model_shape(name_or_path: str, mode: str = "full", scheme_options: Mapping | None = None) -> Shape:
    """Parameters of ``name_or_path`` in ``mode`` (counted on the meta device: no weights are made)."""
    return _shape_cached(name_or_path, mode, json.dumps(scheme_options or {}, sort_keys=True, default=str))


# ------------------------------------------------------------------------------------------------
# Activations, measured at reduced depth
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Activations:
    """Bytes saved for backward by one micro-batch: ``fixed + layers x per_block``."""

    fixed: int
    per_block: int
    layers: int
    measured_depths: tuple[int, ...]
    #: Working memory of backward beyond what is saved: the loss's float32 logits gradients (3 x
    #: micro-batch x context x vocabulary x 4 bytes with the model's loss, one third of that with
    #: the chunked loss), and under checkpointing one block's recomputed activations.
    backward_working_set: int = 0

    @property
    def total(self) -> int:
        return self.fixed + self.layers * self.per_block


def saved_bytes_at_depth(config, layers: int, mode: str, scheme_options: Mapping, micro_batch: int,
                         context: int, *, checkpointing: bool, loss: str = "model", dtype: str = "float32",
                         device: str = "cpu") -> int:
    """One training forward of a ``layers``-block copy of the model under the saved-tensor meter."""
    import torch

    from analysis.lm.loss import forward_loss
    from analysis.lm.models import enable_gradient_checkpointing
    from analysis.selection.memory import SavedTensorMeter

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = _build(with_depth(config, layers), mode, scheme_options, device=device, dtype=torch_dtype)
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    batch = torch.randint(0, config.vocab_size, (micro_batch, context), device=device)
    with SavedTensorMeter(model) as meter:
        loss_value = forward_loss(model, batch, loss)
    del loss_value, model
    return meter.result()["saved_bytes"]


def tail_blocks(mode: str, scheme_options: Mapping | None) -> int:
    """How many of the last blocks a scheme treats apart from the others (0: all alike)."""
    from analysis.selection.schemes import Scheme

    if mode in ("full", "bias", "lora"):
        return 0
    scheme = Scheme.from_config(mode, dict(scheme_options or {}))
    if mode in ("last", "norm_last"):
        return scheme.blocks
    indices = [abs(int(name.split(".")[0])) for name in scheme.weight_update]
    return max([scheme.n_bias_update, *indices])


def measure_activations(name_or_path: str, mode: str, scheme_options: Mapping | None, micro_batch: int,
                        context: int, *, checkpointing: bool, loss: str = "model", dtype: str = "float32",
                        device: str = "cpu", depths: tuple[int, int] | None = None) -> Activations:
    """Activation bytes of the full model, extrapolated from two reduced depths (see the module doc).

    Depths k+1 and k+2 for a scheme that trains the last k blocks apart from the rest: the block
    added between them is one of the plain ones in front, and so are the blocks extrapolated."""
    if depths is None:
        k = tail_blocks(mode, scheme_options)
        depths = (k + 1, k + 2)
    return _activations_cached(name_or_path, mode, _options_key(scheme_options), micro_batch, context,
                               checkpointing, loss, dtype, device, depths)


def _options_key(options: Mapping | None) -> str:
    return json.dumps(options or {}, sort_keys=True, default=str)


@functools.lru_cache(maxsize=64)
def _activations_cached(name_or_path, mode, options_key, micro_batch, context, checkpointing, loss, dtype,
                        device, depths) -> Activations:
    config = model_config(name_or_path)
    options = json.loads(options_key)
    low, high = depths
    # One sequence, scaled by the micro-batch: every saved tensor is per sequence (the shared causal
    # mask, if any is saved, is counted micro-batch times: an overestimate of a few kB).
    at = {d: micro_batch * saved_bytes_at_depth(config, d, mode, options, 1, context, checkpointing=checkpointing,
                                                loss=loss, dtype=dtype, device=device) for d in depths}
    per_block = (at[high] - at[low]) // (high - low)
    logits = micro_batch * context * config.vocab_size * 4
    working = (3 if loss == "model" else 1) * logits
    if checkpointing:  # backward recomputes one block at a time, with everything it saves
        plain = _activations_cached(name_or_path, mode, options_key, micro_batch, context, False, loss, dtype,
                                    device, depths)
        working += plain.per_block
    return Activations(fixed=at[low] - low * per_block, per_block=per_block, layers=config.num_hidden_layers,
                       measured_depths=tuple(depths), backward_working_set=working)


# ------------------------------------------------------------------------------------------------
# Model states, checkpoints, runtime
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_parameters: bool = False
    gradient_checkpointing: bool = False

    def describe(self) -> str:
        parts = [f"ZeRO-{self.zero_stage}"]
        if self.offload_optimizer:
            parts.append("offload optimizer")
        if self.offload_parameters:
            parts.append("offload parameters")
        if self.gradient_checkpointing:
            parts.append("checkpointing")
        return " + ".join(parts)


#: Candidate settings from cheapest in time to dearest: checkpointing repeats the forward (~1/3
#: more compute); optimizer offload adds a host AdamW step and PCIe traffic per step; parameter
#: offload fetches every layer over PCIe twice per micro-batch.
CANDIDATES = (
    Setting(0), Setting(2), Setting(3),
    Setting(0, gradient_checkpointing=True), Setting(2, gradient_checkpointing=True),
    Setting(3, gradient_checkpointing=True),
    Setting(2, offload_optimizer=True), Setting(3, offload_optimizer=True),
    Setting(2, offload_optimizer=True, gradient_checkpointing=True),
    Setting(3, offload_optimizer=True, gradient_checkpointing=True),
    Setting(3, offload_optimizer=True, offload_parameters=True),
    Setting(3, offload_optimizer=True, offload_parameters=True, gradient_checkpointing=True),
)


def state_bytes(shape: Shape, setting: Setting, precision: str, processes: int = 1) -> dict:
    """Model-state bytes per process, by component and by where they live (see the module doc)."""
    check_zero_settings(setting.zero_stage, setting.offload_optimizer, setting.offload_parameters)
    P, T, N, stage = shape.total, shape.trainable, processes, setting.zero_stage
    w = 2 if precision == "bfloat16" else 4
    zero = stage >= 1
    weights = P * w / (N if stage == 3 else 1)
    gathered = min(P, ZERO3_REUSE_DISTANCE // 2 + 2 * shape.largest_layer) * w if stage == 3 else 0
    gradients = T * w / (N if stage >= 2 else 1)
    bucket = REDUCE_BUCKET_ELEMENTS * w if stage in (1, 2) else 0
    master = 4 * T / (N if zero else 1) if (w != 4 or zero) else 0
    # bf16: DeepSpeed's fp32 gradient accumulation; offload: the fp32 gradient partition on the host.
    gradients32 = 4 * T / (N if zero else 1) if (w != 4 or setting.offload_optimizer) else 0
    moments = 8 * T / (N if zero else 1)
    device = {"weights": 0.0 if setting.offload_parameters else weights, "gathered weights": gathered,
              "gradients": gradients, "reduce bucket": bucket, "fp32 master": master, "fp32 gradients": gradients32,
              "AdamW moments": moments}
    host = {"weights": weights if setting.offload_parameters else 0.0}
    if setting.offload_optimizer:
        for key in ("fp32 master", "fp32 gradients", "AdamW moments"):
            host[key], device[key] = device[key], 0.0
        if stage in (1, 2):
            # DeepSpeed's stage_1_and_2.py: temp_grad_buffer_for_gpu_offload and _for_cpu_offload, and the
            # .to(float32) of a gradient in async_inplace_copy_grad_to_fp32_buffer_from_gpu.
            largest = shape.largest_trained
            device["offload copies"] = largest * w + (4 * largest if w != 4 else 0)
            host["offload copies"] = largest * w
        if stage == 2:  # copy_grads_in_partition returns before grads_in_partition is allocated
            device["gradients"] = 0.0
    return {"device": {k: int(v) for k, v in device.items()}, "host": {k: int(v) for k, v in host.items() if v}}


def deepspeed_estimate(shape: Shape, setting: Setting, processes: int = 1) -> dict | None:
    """DeepSpeed's own model-state estimate (16-bit mixed precision, no activations), where it has one:
    ``{"device": bytes, "host": bytes}`` (its host figure includes a 1.5 buffer factor)."""
    if setting.zero_stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        host, device = estimate_zero2_model_states_mem_needs(shape.total, num_gpus_per_node=processes,
                                                             cpu_offload=setting.offload_optimizer)
        return {"device": device, "host": host}
    if setting.zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        host, device, _ = estimate_zero3_model_states_mem_needs(
            shape.total, shape.largest_layer, num_gpus_per_node=processes, cpu_offload=setting.offload_optimizer,
            cpu_offload_params=setting.offload_parameters, zero_init=False)
        return {"device": device, "host": host}
    return None


def checkpoint_bytes(shape: Shape, precision: str, mode: str) -> int:
    """One resumable checkpoint: the trained weights (all of them for ``full``) and the optimizer state."""
    w = 2 if precision == "bfloat16" else 4
    weights = shape.total * w if mode == "full" else shape.trainable * w
    return int(weights + 12 * shape.trainable)


def output_bytes(shape: Shape, precision: str, mode: str) -> int:
    w = 2 if precision == "bfloat16" else 4
    return int((shape.total if mode == "full" else shape.trainable) * w)


def checkpoints_written(total_steps: int, curve_points: int, checkpoint_every: int) -> int:
    if checkpoint_every:
        return max(0, math.ceil(total_steps / checkpoint_every) - 1)
    return max(0, curve_points - 2)


def runtime_seconds(shape: Shape, tokens: int, setting: Setting, peak_flops: float, utilisation: float,
                    processes: int = 1, optimizer_steps: int = 0) -> float:
    """Training time of ``tokens`` trained tokens (see the module doc for the FLOP count)."""
    flops_per_token = (8 if setting.gradient_checkpointing else 6) * shape.total
    seconds = flops_per_token * tokens / (peak_flops * utilisation * processes)
    if setting.offload_optimizer:
        seconds += optimizer_steps * shape.trainable / processes / HOST_ADAM_PARAMS_PER_S
    return seconds


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------

@dataclass
class Estimate:
    setting: Setting
    device_bytes: int
    host_bytes: int
    device: dict
    host: dict
    activations: Activations
    fits: bool
    deepspeed: dict | None = None

    def row(self) -> dict:
        return {"setting": self.setting.describe(), "device_gb": self.device_bytes / GB,
                "host_gb": self.host_bytes / GB, "activations_gb": self.activations.total / GB,
                "fits": self.fits,
                "deepspeed_device_gb": self.deepspeed["device"] / GB if self.deepspeed else float("nan")}


@dataclass
class Target:
    """Where the job runs: ``device`` "cuda" (per-GPU memory limit) or "cpu" (host only)."""

    device: str = "cuda"
    device_memory_bytes: float = 80 * GB
    host_memory_bytes: float | None = None
    processes: int = 1
    peak_flops: float = GPU_PEAK_FLOPS["h100"]
    utilisation: float = DEFAULT_UTILISATION


def precision_for(dtype: str, target: Target) -> str:
    return ("bfloat16" if target.device == "cuda" else "float32") if dtype == "auto" else dtype


def estimate(shape: Shape, setting: Setting, activations: Activations, precision: str, target: Target,
             mode: str) -> Estimate:
    states = state_bytes(shape, setting, precision, target.processes)
    device = {**states["device"], "activations": activations.total,
              "backward working set": activations.backward_working_set}
    w = 2 if precision == "bfloat16" else 4
    host = {"process": PROCESS_BASE_BYTES[target.device], "weights as loaded": shape.total * w,
            **states["host"]}
    if setting.zero_stage == 3:
        # The gathered tensors, the plain model they are loaded into, and its weights file read
        # through a memory map (counted as resident while it is read).
        host["whole weights gathered to write outputs"] = 3 * shape.total * w
    if setting.zero_stage >= 1:
        host["DeepSpeed ZeRO runtime"] = ZERO_RUNTIME_BYTES
    if setting.offload_optimizer and setting.zero_stage < 3:
        # Measured (benchmarks/memory_plan.py): ZeRO-1/2's offloaded step keeps two more fp32 copies
        # of the gradient partition on the host (ZeRO-3's offload path does not).
        host["offload gradient buffers"] = 8 * shape.trainable / target.processes
    if target.device == "cpu":  # the "device" is the host
        # Of the bucket only the pages written are resident on the CPU: at most the trained gradients.
        device["reduce bucket"] = min(device["reduce bucket"], shape.trainable * w)
        host.update({f"{k} (on CPU)": v for k, v in device.items()})
        host.pop("weights as loaded")  # the module's own weights are those
        device_total = 0
    else:
        device_total = int(sum(device.values()))
    host_total = int(sum(host.values()))
    fits = device_total + (GPU_RESERVE_BYTES if target.device == "cuda" else 0) <= target.device_memory_bytes \
        if target.device == "cuda" else True
    if target.host_memory_bytes is not None:
        fits = fits and host_total <= target.host_memory_bytes
    return Estimate(setting=setting, device_bytes=device_total, host_bytes=host_total,
                    device={k: int(v) for k, v in device.items()}, host={k: int(v) for k, v in host.items()},
                    activations=activations, fits=fits,
                    deepspeed=deepspeed_estimate(shape, setting, target.processes) if precision == "bfloat16"
                    else None)


def plan_model(name_or_path: str, mode: str, scheme_options: Mapping | None, *, micro_batch: int, context: int,
               dtype: str, loss: str, target: Target, settings: Iterable[Setting] = CANDIDATES,
               measure_device: str = "cpu") -> list[Estimate]:
    """Every candidate setting of one model and mode, in order of cost."""
    shape = model_shape(name_or_path, mode, scheme_options)
    precision = precision_for(dtype, target)
    estimates = []
    for setting in settings:
        # Under ZeRO-3, DeepSpeed's linear keeps every linear input: measure partial modes as full.
        measured_mode = "full" if setting.zero_stage == 3 else mode
        activations = measure_activations(name_or_path, measured_mode, scheme_options, micro_batch, context,
                                          checkpointing=setting.gradient_checkpointing, loss=loss,
                                          dtype=precision, device=measure_device)
        estimates.append(estimate(shape, setting, activations, precision, target, mode))
    return estimates


def cheapest(estimates: list[Estimate]) -> Estimate | None:
    return next((e for e in estimates if e.fits), None)


def setting_of(model_spec: Mapping) -> Setting:
    return Setting(model_spec["zero_stage"], model_spec["offload_optimizer"], model_spec["offload_parameters"],
                   model_spec["gradient_checkpointing"])


def check_fits(model_key: str, est: Estimate, target: Target) -> None:
    """Refuse, before any weight is loaded, a configuration the plan says does not fit."""
    if est.fits:
        return
    largest = sorted(est.device.items() if target.device == "cuda" else est.host.items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{k} {v / GB:.1f}" for k, v in largest)
    if target.device == "cuda" and est.device_bytes + GPU_RESERVE_BYTES > target.device_memory_bytes:
        need, limit, where = est.device_bytes + GPU_RESERVE_BYTES, target.device_memory_bytes, "GPU memory"
    else:
        need, limit, where = est.host_bytes, target.host_memory_bytes, "host memory"
    raise PipelineError(
        f"models.{model_key}: {est.setting.describe()} needs about {need / GB:.1f} GB of {where} per process "
        f"({parts} GB, ...) but {limit / GB:.1f} GB are available; `python -m analysis plan CONFIG` lists the "
        "settings that fit (zero_stage, offload_optimizer, offload_parameters, gradient_checkpointing)")


def as_dict(est: Estimate) -> dict:
    return {**est.row(), "device": est.device, "host": est.host, "activations": asdict(est.activations)}



# ------------------------------------------------------------------------------------------------
# Where a job runs, and the check before it trains
# ------------------------------------------------------------------------------------------------

def host_memory_limit() -> float | None:
    """Bytes this process may use on the host: the cgroup's limit (a SLURM job's) or the machine's."""
    limits = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            limits.append(int(text))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return float(min(limits)) if limits else None


def job_target(plan_settings: Mapping, processes: int) -> Target:
    """The target of a job about to run here: this GPU's memory, or the host's on CPU."""
    import torch

    host = host_memory_limit()
    peak = plan_settings["gpu_peak_tflops"] * 1e12
    if torch.cuda.is_available():
        return Target(device="cuda", device_memory_bytes=torch.cuda.get_device_properties(0).total_memory,
                      host_memory_bytes=host, processes=processes, peak_flops=peak,
                      utilisation=plan_settings["utilisation"])
    return Target(device="cpu", device_memory_bytes=0, host_memory_bytes=host, processes=processes,
                  peak_flops=peak, utilisation=plan_settings["utilisation"])


def planned_mode(mode: str) -> str:
    """auto_sparse chooses its scheme inside the job: it is planned as full, an upper bound."""
    return "full" if mode == "auto_sparse" else mode


def check_job(model_key: str, model_spec: Mapping, mode: str, scheme_options: Mapping, loss: str,
              plan_settings: Mapping, processes: int) -> Estimate:
    """Before the adapt job loads any weight: its configured setting against this machine's memory."""
    target = job_target(plan_settings, processes)
    est = plan_model(model_spec["name_or_path"], planned_mode(mode), scheme_options,
                     micro_batch=model_spec["micro_batch_size"], context=model_spec["context_length"],
                     dtype=model_spec["dtype"], loss=loss, target=target, settings=[setting_of(model_spec)],
                     measure_device=target.device)[0]
    check_fits(model_key, est, target)
    return est


# ------------------------------------------------------------------------------------------------
# The plan of a config: what `python -m analysis plan` prints and rule `plan` writes
# ------------------------------------------------------------------------------------------------

def config_target(cfg: Mapping, model_key: str, gpu_memory_gb: float | None = None, gpus: int | None = None,
                  host_memory_gb: float | None = None) -> Target:
    """The target a config's adapt jobs run on: GPUs (adaptation.plan) when they ask for any."""
    settings = cfg["adaptation"]["plan"]
    asked = cfg["models"][model_key]["resources"]["adapt"]["gpus"]
    processes = gpus if gpus is not None else (cfg["adaptation"]["gpus"] if asked is None else asked)
    device = "cuda" if processes else "cpu"
    return Target(device=device,
                  device_memory_bytes=(gpu_memory_gb or settings["gpu_memory_gb"]) * GB if device == "cuda" else 0,
                  host_memory_bytes=host_memory_gb * GB if host_memory_gb else None,
                  processes=max(1, processes), peak_flops=settings["gpu_peak_tflops"] * 1e12,
                  utilisation=settings["utilisation"])


def plan_record(cfg: Mapping, model_key: str, target: Target, modes: Iterable[str] | None = None,
                measure_device: str = "cpu") -> dict:
    """Every candidate setting of every adaptation mode of one model, the configured one and the
    cheapest that fits; JSON-ready."""
    declare_built_models(cfg)
    spec = cfg["models"][model_key]
    options = cfg["adaptation"]["schemes"]
    precision = precision_for(spec["dtype"], target)
    configured = setting_of(spec)
    record = {"model": model_key, "name_or_path": spec["name_or_path"], "precision": precision,
              "target": asdict(target), "micro_batch": spec["micro_batch_size"], "context": spec["context_length"],
              "tokens_per_step": spec["micro_batch_size"] * spec["gradient_accumulation_steps"]
              * spec["context_length"] * target.processes,
              "configured": asdict(configured), "modes": {}}
    for mode in modes or cfg["adaptation"]["modes"]:
        shape = model_shape(spec["name_or_path"], planned_mode(mode), options)
        settings = list(CANDIDATES) + ([configured] if configured not in CANDIDATES else [])
        estimates = plan_model(spec["name_or_path"], planned_mode(mode), options, micro_batch=spec["micro_batch_size"],
                               context=spec["context_length"], dtype=spec["dtype"], loss=cfg["adaptation"]["loss"],
                               target=target, settings=settings, measure_device=measure_device)
        mine = estimates[settings.index(configured)]
        best = cheapest(estimates[:len(CANDIDATES)])
        record["modes"][mode] = {
            "parameters": asdict(shape),
            "activations_per_micro_batch": {
                "without_checkpointing": asdict(estimates[settings.index(Setting(0))].activations),
                "with_checkpointing": asdict(estimates[settings.index(Setting(0, gradient_checkpointing=True))]
                                             .activations)},
            "checkpoint_bytes": checkpoint_bytes(shape, precision, mode),
            "output_bytes": output_bytes(shape, precision, mode),
            "flops_per_token": (8 if configured.gradient_checkpointing else 6) * shape.total,
            "candidates": [as_dict(e) for e in estimates[:len(CANDIDATES)]],
            "configured": as_dict(mine),
            "cheapest": as_dict(best) if best else None,
        }
    return record


def job_resources(record: Mapping, mode: str, train_tokens: int | None, steps: int | None) -> dict:
    """SLURM requests of one adapt job from its model's plan: host memory (MB: 1.2x the estimate plus
    1 GB), runtime (minutes: 1.5x the estimate plus 10 for loading, evaluation and writing; 60 while
    the domain's tokens are not known) and disk (MB: the outputs and two checkpoints)."""
    mode_plan = record["modes"][mode]
    mem_mb = math.ceil((mode_plan["configured"]["host_gb"] * GB * 1.2 + 1e9) / 1e6)
    runtime = 60
    if train_tokens:
        runtime = math.ceil(1.5 * record_runtime_seconds(record, mode, train_tokens, steps or 0) / 60) + 10
    disk_mb = math.ceil((mode_plan["output_bytes"] + 2 * mode_plan["checkpoint_bytes"]) / 1e6) + 100
    return {"mem_mb": mem_mb, "runtime": runtime, "disk_mb": disk_mb}


def record_runtime_seconds(record: Mapping, mode: str, train_tokens: int, steps: int) -> float:
    """``runtime_seconds`` of a plan record's configured setting on its target."""
    target = record["target"]
    on_gpu = target["device"] == "cuda"
    parameters = record["modes"][mode]["parameters"]
    # A plan written before largest_trained was recorded: a tensor is never larger than its module.
    shape = Shape(**{"largest_trained": parameters["largest_layer"], **parameters})
    return runtime_seconds(shape, train_tokens,
                           Setting(**record["configured"]), target["peak_flops"] if on_gpu else CPU_FLOPS,
                           target["utilisation"] if on_gpu else 1.0, target["processes"], steps)


#: Model FLOP/s of a CPU adapt job: benchmarks/training.py measured 6,280 tokens/s for the demo
#: shape (1.3 M parameters) on 2 cores, 6 x 1.3 M x 6,280 = 50 GFLOP/s; taken as 10 for larger
#: models and shared nodes.
CPU_FLOPS = 10e9


def _gb(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def plan_markdown(record: Mapping, train_tokens: int | None, curve_points: int, checkpoint_every: int) -> str:
    """The plan of one model as Markdown: shape, activations, every candidate, the verdict.

    ``curve_points`` and ``checkpoint_every`` are the config's (adaptation.*); with ``train_tokens``
    (tokens of one run) it adds the run's steps, checkpoints, runtime and job resources."""
    target = record["target"]
    where = (f"{target['processes']} x GPU of {target['device_memory_bytes'] / GB:.0f} GB, "
             f"{target['peak_flops'] / 1e12:.0f} TFLOP/s bf16 peak at {target['utilisation']:.0%}"
             if target["device"] == "cuda" else "CPU (host memory only)")
    lines = [f"## {record['model']} ({record['name_or_path']}), {record['precision']}, "
             f"micro-batch {record['micro_batch']} x {record['context']} tokens, on {where}", ""]
    for mode, plan in record["modes"].items():
        params = plan["parameters"]
        act = plan["activations_per_micro_batch"]
        no_ck, ck = (Activations(**act["without_checkpointing"]), Activations(**act["with_checkpointing"]))
        lines += [f"### mode {mode}", "",
                  f"- parameters: {params['total'] / 1e6:,.1f} M, trained {params['trainable'] / 1e6:,.1f} M "
                  f"({params['trainable'] / params['total']:.2%}); {params['layers']} blocks; largest layer "
                  f"{params['largest_layer'] / 1e6:,.1f} M",
                  f"- activations per micro-batch (measured at depths {no_ck.measured_depths}, extrapolated): "
                  f"{_gb(no_ck.total / GB)} GB without checkpointing ({no_ck.per_block / 1e6:,.1f} MB per block), "
                  f"{_gb(ck.total / GB)} GB with",
                  f"- checkpoint: {_gb(plan['checkpoint_bytes'] / GB)} GB each (weights and optimizer state; the disk "
                  f"holds two while one is written); outputs {_gb(plan['output_bytes'] / GB)} GB"]
        inner = max(curve_points - 2, 0)
        cadence = (f"every {checkpoint_every} optimizer steps" if checkpoint_every
                   else f"at the {inner} inner curve point{'' if inner == 1 else 's'}")
        lines.append(f"- checkpoints are written {cadence} (adaptation.checkpoint_every, curve_points); the "
                     "newest replaces the one before")
        if train_tokens:
            steps = train_tokens // max(1, record["tokens_per_step"])
            resources = job_resources(record, mode, train_tokens, steps)
            seconds = record_runtime_seconds(record, mode, train_tokens, steps)
            written = checkpoints_written(steps, curve_points, checkpoint_every)
            speed = (f"at {target['utilisation']:.0%} of {target['peak_flops'] / 1e12:.0f} TFLOP/s"
                     if target["device"] == "cuda" else f"at {CPU_FLOPS / 1e9:.0f} GFLOP/s on CPU")
            lines.append(f"- {train_tokens / 1e6:,.1f} M training tokens ({record.get('tokens_source', 'given')}, "
                         f"{steps:,} optimizer steps, {written} checkpoint{'' if written == 1 else 's'} written): "
                         "about "
                         f"{seconds / 3600:,.2f} h {speed} with the configured "
                         f"setting; its adapt job asks for mem_mb={resources['mem_mb']}, "
                         f"runtime={resources['runtime']} min, disk_mb={resources['disk_mb']}")
        lines += ["", "| setting | device GB | host GB | activations GB "
                      "| DeepSpeed's estimate of the model states, device GB | fits |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for row in plan["candidates"]:
            ds = "" if math.isnan(row["deepspeed_device_gb"]) else _gb(row["deepspeed_device_gb"])
            lines.append(f"| {row['setting']} | {_gb(row['device_gb'])} | {_gb(row['host_gb'])} | "
                         f"{_gb(row['activations_gb'])} | {ds} | {'yes' if row['fits'] else 'no'} |")
        mine, best = plan["configured"], plan["cheapest"]
        lines += ["", f"- configured: {mine['setting']}: {_gb(mine['device_gb'])} GB device, "
                      f"{_gb(mine['host_gb'])} GB host: {'fits' if mine['fits'] else 'DOES NOT FIT'}",
                  "- cheapest that fits: "
                  + (best["setting"] if best else "none (reduce micro_batch_size or use a smaller mode)"),
                  ""]
    return "\n".join(lines)


def write_plan(cfg: Mapping, model_key: str, json_path: str | Path, markdown_path: str | Path) -> dict:
    """Rule plan: the model's plan for the config's target; fails (one line) if the configured setting
    does not fit and ``adaptation.plan.check`` is on, so that no adapt job of it is started."""
    target = config_target(cfg, model_key)
    modes = list(cfg["adaptation"]["modes"])
    ablation = cfg["adaptation"]["join_ablation"]
    if model_key in ablation["models"] and ablation["mode"] not in modes:
        modes.append(ablation["mode"])
    if cfg["models"][model_key]["offload_optimizer"]:
        # Build (or find) DeepSpeed's CPU Adam now, once, before the adapt jobs that need it.
        from analysis.lm.ops import load_cpu_adam

        load_cpu_adam()
    record = plan_record(cfg, model_key, target, modes)
    # The job runs before any domain is tokenised: the training tokens of a run are known only when
    # adaptation.max_train_tokens caps them (`python -m analysis plan` reads them from token files).
    cap = cfg["adaptation"]["max_train_tokens"]
    if cap is not None:
        record["tokens_source"] = "adaptation.max_train_tokens, at most"
    write_json(json_path, record)
    Path(markdown_path).write_text(plan_markdown(record, cap, cfg["adaptation"]["curve_points"],
                                                 cfg["adaptation"]["checkpoint_every"]))
    log = logging.getLogger(__name__)
    for mode, plan in record["modes"].items():
        log.info("%s / %s: configured %s: %.2f GB device, %.2f GB host (%s); cheapest that fits: %s", model_key,
                 mode, plan["configured"]["setting"], plan["configured"]["device_gb"],
                 plan["configured"]["host_gb"], "fits" if plan["configured"]["fits"] else "does not fit",
                 plan["cheapest"]["setting"] if plan["cheapest"] else "none")
    if cfg["adaptation"]["plan"]["check"]:
        for mode, plan in record["modes"].items():
            mine = plan["configured"]
            if not mine["fits"]:
                best = plan["cheapest"]
                raise PipelineError(
                    f"models.{model_key} (mode {mode}): {mine['setting']} needs {mine['device_gb']:.1f} GB per GPU "
                    f"and {mine['host_gb']:.1f} GB of host memory, more than the "
                    f"{target.device_memory_bytes / GB:.0f} GB GPU of adaptation.plan allows; "
                    + (f"{best['setting']} fits ({best['device_gb']:.1f} GB)" if best else "no setting fits")
                    + f" (results/plan/{model_key}.md lists them all)")
    return record
