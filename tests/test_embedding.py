"""SBERT embeddings: the packaged model offline, equality with encode, truncation, bad model names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.similarity import embedding

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "The treaty was signed in 1648 by the envoys of both kingdoms.",
    "We present a measurement of the inclusive cross section using 36.1 fb$^{-1}$ of data.",
    "short",
    " ".join(["a long paragraph about crops and irrigation"] * 80),  # longer than 256 tokens
    "Let $X$ be a smooth projective variety over an algebraically closed field.",
]


@pytest.fixture(scope="module")
def model():
    return embedding.load_model("all-MiniLM-L6-v2", device="cpu")


def test_packaged_model_resolves_to_a_local_directory():
    location = embedding.resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert os.path.isdir(location) and location.endswith("model")
    assert embedding.resolve_model("some-org/unknown-model") == "some-org/unknown-model"


@pytest.mark.parametrize("budget", [64, 300, 4096])
def test_embed_texts_equals_encode_and_is_normalised(model, budget):
    ours, stats = embedding.embed_texts(model, TEXTS, tokens_per_batch=budget)
    reference = model.encode(TEXTS, normalize_embeddings=True)
    assert ours.dtype == np.float32 and ours.shape == (5, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    assert stats.n_truncated == 1 and stats.n_texts == 5
    assert stats.n_tokens <= 4 * 100 + 256


def test_embed_texts_empty(model):
    out, stats = embedding.embed_texts(model, [])
    assert out.shape == (0, 384) and stats.n_texts == 0


def test_embed_sample_writes_npy_and_metadata(tmp_path):
    pq.write_table(pa.table({"text": TEXTS}), tmp_path / "s.parquet")
    record = embedding.embed_sample(
        parquet=tmp_path / "s.parquet", output=tmp_path / "e.npy", metadata=tmp_path / "e.json",
        model_name="all-MiniLM-L6-v2", max_seq_length=128, tokens_per_batch=512, device="cpu", threads=1,
    )
    saved = np.load(tmp_path / "e.npy")
    assert saved.shape == (5, 384) and saved.dtype == np.float32
    meta = json.loads((tmp_path / "e.json").read_text())
    assert meta == record
    assert meta["count"] == 5 and meta["dimension"] == 384 and meta["max_seq_length"] == 128
    assert meta["truncated_texts"] == 1 and meta["normalized"] == "l2"


def test_unknown_model_offline_gives_instructions(tmp_path):
    code = textwrap.dedent(
        """
        from analysis.similarity.embedding import load_model, EmbeddingModelError
        try:
            load_model("some-org/not-downloaded-model")
        except EmbeddingModelError as exc:
            print(exc)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "cannot load sentence-transformers model 'some-org/not-downloaded-model'" in out.stdout
    assert "set similarity.model to its path" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr
