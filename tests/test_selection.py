"""Parameter selection schemes and the measured memory they save."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from analysis.selection.memory import SavedTensorMeter, saved_for_backward
from analysis.selection.schemes import (
    PartialUpdate,
    Scheme,
    SchemeError,
    apply_scheme,
    merged_model,
    touched_parameters,
)

SPARSE = {"sparse": {"n_bias_update": 1, "weight_update": {"-1.mlp.c_fc": 0.25, "0.attn.c_proj": 1.0}}}


def gpt2(n_layer=3, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, n_positions=16, vocab_size=100,
                        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_bias_mode_trains_exactly_the_biases():
    names = trainable(apply_scheme(gpt2(), Scheme("bias")))
    assert names and all(n.endswith("bias") for n in names)
    assert len(names) == sum(1 for n, _ in gpt2().named_parameters() if n.endswith("bias"))


def test_last_trains_the_last_blocks_and_final_norm_but_not_a_tied_head():
    names = trainable(apply_scheme(gpt2(), Scheme("last", blocks=1)))
    assert all(n.startswith(("transformer.h.2.", "transformer.ln_f.")) for n in names), names
    assert "transformer.ln_f.weight" in names and "transformer.wte.weight" not in names


def test_norm_last_trains_every_norm_and_the_last_block():
    names = trainable(apply_scheme(gpt2(), Scheme("norm_last", blocks=1)))
    assert {"transformer.h.0.ln_1.weight", "transformer.ln_f.bias", "transformer.h.2.mlp.c_fc.weight"} <= names
    assert "transformer.h.0.mlp.c_fc.weight" not in names


def test_sparse_scheme_wraps_partial_layers_and_names_what_it_touches():
    model = apply_scheme(gpt2(), Scheme.from_config("sparse", SPARSE))
    assert isinstance(model.transformer.h[2].mlp.c_fc, PartialUpdate)
    assert model.transformer.h[2].mlp.c_fc.k == 8  # 25% of 32 input channels
    names = trainable(model)
    assert "transformer.h.0.attn.c_proj.weight" in names  # ratio 1: the weight itself
    assert "transformer.h.2.attn.c_attn.bias" in names and "transformer.h.1.attn.c_attn.bias" not in names
    touched = touched_parameters(model)
    assert "transformer.h.2.mlp.c_fc.weight" in touched and all(".base." not in t for t in touched)


def test_partial_update_gradient_equals_the_weight_gradient_of_those_channels():
    x = torch.randn(4, 5, 32)
    full, partial = gpt2(), gpt2()
    layer = full.transformer.h[2].mlp.c_fc  # Conv1D, weight (in, out)
    wrapped = PartialUpdate(partial.transformer.h[2].mlp.c_fc, 0.25)
    layer(x).square().sum().backward()
    wrapped(x).square().sum().backward()
    assert torch.allclose(wrapped.delta.grad, layer.weight.grad[:8, :].T, atol=1e-5)
    linear = torch.nn.Linear(32, 6)
    wrapped_linear = PartialUpdate(torch.nn.Linear(32, 6), 0.5)
    wrapped_linear.base.load_state_dict(linear.state_dict())
    linear(x).sum().backward()
    wrapped_linear(x).sum().backward()
    assert torch.allclose(wrapped_linear.delta.grad, linear.weight.grad[:, :16], atol=1e-5)


def test_merged_model_computes_what_the_wrapped_one_did():
    model = apply_scheme(gpt2(), Scheme.from_config("sparse", SPARSE))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    x = torch.randint(0, 100, (2, 16))
    before = model(input_ids=x).logits
    after = merged_model(model)(input_ids=x).logits
    assert not any(isinstance(m, PartialUpdate) for m in model.modules())
    assert torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize(
    "scheme, message",
    [
        (Scheme("sideways"), "unknown mode 'sideways'"),
        (Scheme("sparse", weight_update={"-1.mlp.c_fx": 0.5}), "block 2 has no linear layer 'mlp.c_fx'"),
        (Scheme("sparse", weight_update={"7.mlp.c_fc": 0.5}), "'7' is not a block index"),
        (Scheme("sparse", n_bias_update=9), "n_bias_update = 9 but the model has 3 blocks"),
        (Scheme("last", blocks=4), "blocks = 4 but the model has 3"),
        (Scheme("lora", lora={"target_modules": ["q_proj"]}), "none of target_modules ['q_proj']"),
    ],
)
def test_bad_schemes_name_the_value(scheme, message):
    with pytest.raises(SchemeError) as info:
        apply_scheme(gpt2(), scheme)
    assert message in str(info.value)


def test_lora_trains_only_adapters_and_touches_the_wrapped_weights():
    model = apply_scheme(gpt2(), Scheme("lora", lora={"rank": 2, "target_modules": ["c_attn"]}))
    names = trainable(model)
    assert names and all("lora_" in n for n in names)
    assert touched_parameters(model) == [f"transformer.h.{i}.attn.c_attn.weight" for i in range(3)]


def measure(mode, **options):
    model = apply_scheme(gpt2(n_layer=4), Scheme.from_config(mode, {mode: options}) if options else Scheme(mode))
    x = torch.randint(0, 100, (4, 16))
    return saved_for_backward(model, lambda: model(input_ids=x, labels=x).loss)


def test_frozen_linear_layers_keep_no_input():
    full, bias = measure("full"), measure("bias")
    assert full["by_kind"]["linear inputs"] > 0
    assert bias["by_kind"]["linear inputs"] == 0  # the bias gradient needs no activation
    assert bias["saved_bytes"] < full["saved_bytes"]


def test_sparse_update_keeps_only_its_share_of_a_layer_input():
    quarter = measure("sparse", n_bias_update=0, weight_update={"-1.mlp.c_fc": 0.25})
    whole = measure("sparse", n_bias_update=0, weight_update={"-1.mlp.c_fc": 1.0})
    assert quarter["by_kind"]["linear inputs"] * 4 == whole["by_kind"]["linear inputs"]
    assert quarter["saved_bytes"] < whole["saved_bytes"]


def test_updating_only_late_blocks_saves_nothing_for_early_ones():
    last = measure("sparse", n_bias_update=1, weight_update={})
    everything = measure("bias")
    assert last["saved_bytes"] * 2 < everything["saved_bytes"]


def test_meter_counts_a_storage_once_and_skips_parameters():
    weight = torch.nn.Parameter(torch.randn(8, 8))
    module = torch.nn.Module()
    module.weight = weight
    x = torch.randn(8, 8, requires_grad=True)
    with SavedTensorMeter(module) as meter:
        y = (x * x[:4].repeat(2, 1)).sum() + (x @ weight).sum() + (x[:, :2] * 3).exp().sum()
    result = meter.result()
    y.backward()
    # x (once, although saved several times and as views), exp's output; the weight is not counted
    assert result["saved_bytes"] == 8 * 8 * 4 + 8 * 8 * 4 + 8 * 2 * 4
