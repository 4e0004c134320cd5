"""The sliding-window perplexity engine against a one-position-at-a-time brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis.lm.models import load_causal_lm, load_tokenizer
from analysis.lm.perplexity import perplexities, token_nll, windows
from tests.builders import save_tiny_gpt2, tiny_lm_texts


@pytest.fixture(scope="module")
def model_and_stream(tmp_path_factory):
    from analysis.lm.data import tokenize_documents

    directory = save_tiny_gpt2(tmp_path_factory.mktemp("ppl") / "hf", context=16)
    tokenizer = load_tokenizer(str(directory))
    stream, _ = tokenize_documents(tokenizer, tiny_lm_texts(3, seed=4))
    return load_causal_lm(str(directory)), stream[:70], tokenizer.eos_token_id


def brute_force(model, stream, prefix, context):
    """-log p(stream[i] | the `context` tokens before it), one forward pass per token."""
    sequence = torch.as_tensor(np.concatenate([[prefix], stream]), dtype=torch.long)
    out = []
    with torch.no_grad():
        for t in range(1, len(sequence)):
            inputs = sequence[max(0, t - context) : t][None]
            out.append(-torch.log_softmax(model(input_ids=inputs).logits[0, -1].double(), -1)[sequence[t]].item())
    return np.array(out)


def test_stride_one_matches_brute_force_with_the_full_window(model_and_stream):
    model, stream, eos = model_and_stream
    engine = token_nll(model, stream, eos, window=16, stride=1, batch_size=5)
    reference = brute_force(model, stream, eos, context=15)
    assert engine.shape == (len(stream),)
    np.testing.assert_allclose(engine, reference, rtol=1e-5)


@pytest.mark.parametrize("length, window, stride", [(70, 16, 16), (71, 16, 5), (10, 16, 4), (200, 32, 7)])
def test_every_target_is_scored_once_with_enough_context(length, window, stride):
    plan = windows(length, window, stride)
    scored = [t for w in plan for t in range(w.first_target, w.end)]
    assert scored == list(range(1, length))
    for w in plan:
        assert w.end - w.begin <= window
        if w.begin > 0:
            assert w.first_target - w.begin >= window - stride  # context of the first target it scores


def test_stride_equal_to_window_gives_disjoint_windows():
    plan = windows(70, 16, 16)
    assert [(w.begin, w.end) for w in plan] == [(0, 16), (15, 31), (30, 46), (45, 61), (60, 70)]
    assert all(w.first_target == w.begin + 1 for w in plan)  # only the window's own tokens as context


def test_disjoint_windows_match_brute_force_with_their_own_context(model_and_stream):
    model, stream, eos = model_and_stream
    engine = token_nll(model, stream, eos, window=16, stride=16)
    sequence = np.concatenate([[eos], stream])
    with torch.no_grad():
        for t in (1, 15, 16, 17, 40, 70):
            begin = (t - 1) // 15 * 15  # windows [0, 16), [15, 31), ... score 1..15, 16..30, ...
            inputs = torch.as_tensor(sequence[begin:t], dtype=torch.long)[None]
            expected = -torch.log_softmax(model(input_ids=inputs).logits[0, -1].double(), -1)[int(sequence[t])]
            assert engine[t - 1] == pytest.approx(float(expected), rel=1e-5)


def test_batch_size_does_not_change_the_result(model_and_stream):
    model, stream, eos = model_and_stream
    one = token_nll(model, stream, eos, window=16, stride=6, batch_size=1)
    many = token_nll(model, stream, eos, window=16, stride=6, batch_size=64)
    np.testing.assert_allclose(one, many, rtol=1e-6)


def test_token_word_and_byte_perplexity_share_one_total():
    nll = np.full(10, math.log(4.0))
    result = perplexities(nll.sum(), len(nll), words=5, n_bytes=40)
    assert result["token_perplexity"] == pytest.approx(4.0)
    assert result["word_perplexity"] == pytest.approx(16.0)  # 10 tokens' NLL over 5 words
    assert result["bits_per_byte"] == pytest.approx(10 * 2 / 40)


def test_a_memory_mapped_uint16_stream_scores_as_the_array_and_the_total_needs_no_array(model_and_stream, tmp_path):
    from analysis.lm.perplexity import total_nll

    model, stream, eos = model_and_stream
    mapped = np.memmap(tmp_path / "s.bin", dtype=np.uint16, mode="w+", shape=stream.shape)
    mapped[:] = stream
    mapped.flush()
    mapped = np.memmap(tmp_path / "s.bin", dtype=np.uint16, mode="r", shape=stream.shape)
    reference = token_nll(model, stream, eos, window=16, stride=6, batch_size=4)
    np.testing.assert_array_equal(token_nll(model, mapped, eos, window=16, stride=6, batch_size=4), reference)
    total, count = total_nll(model, mapped, eos, window=16, stride=6, batch_size=4)
    assert count == len(stream) and total == pytest.approx(reference.sum(), rel=1e-12)
