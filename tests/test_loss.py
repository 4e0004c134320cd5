"""The chunked next-token loss equals the model's own loss, in value and gradients, and keeps no logits."""

from __future__ import annotations

import pytest
import torch

from analysis.lm.loss import causal_lm_loss
from analysis.selection.memory import saved_for_backward
from analysis.selection.schemes import Scheme, apply_scheme
from tests.test_selection import gpt2


@pytest.mark.parametrize("mode", ["full", "sparse", "lora"])
def test_chunked_loss_matches_the_model_loss_and_gradients(mode):
    options = {"sparse": {"n_bias_update": 1, "weight_update": {"-1.mlp.c_fc": 0.5}},
               "lora": {"rank": 2, "target_modules": ["c_attn"]}}
    a = apply_scheme(gpt2(seed=3), Scheme.from_config(mode, options))
    b = apply_scheme(gpt2(seed=3), Scheme.from_config(mode, options))
    x = torch.randint(0, 100, (3, 16))
    reference = a(input_ids=x, labels=x).loss
    chunked = causal_lm_loss(b, x, chunk_rows=7)  # chunks that do not divide the 45 rows
    assert float(chunked) == pytest.approx(float(reference), rel=1e-6)
    reference.backward()
    chunked.backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if pa.requires_grad:
            assert torch.allclose(pa.grad, pb.grad, atol=1e-6, rtol=1e-5), name


def test_chunked_loss_keeps_no_logits():
    model = gpt2()
    x = torch.randint(0, 100, (4, 16))
    usual = saved_for_backward(model, lambda: model(input_ids=x, labels=x).loss)
    chunked = saved_for_backward(model, lambda: causal_lm_loss(model, x))
    logits_bytes = 4 * 16 * 100 * 4
    assert usual["by_kind"]["loss/head"] >= logits_bytes
    assert chunked["by_kind"]["loss/head"] < logits_bytes / 2
