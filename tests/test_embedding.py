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


@pytest.mark.slow
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


# Corpus scale: units, a memory-mapped output, resumption after a kill.

WORDS = (
    "the treaty was signed by envoys of both kingdoms we present a measurement of the inclusive cross "
    "section let be a smooth projective variety over an algebraically closed field crops irrigation"
).split()


def sample_texts(n: int, seed: int = 0, max_words: int = 400) -> list[str]:
    """Texts of 1 to ``max_words`` words (at 400, some longer than the model reads), in no order."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, max_words)))) for _ in range(n)]


def write_sample(path, texts, row_group_size=None):
    pq.write_table(pa.table({"text": texts, "split": ["train"] * len(texts)}), path, row_group_size=row_group_size)
    return path


def embed(tmp_path, parquet, name, **settings):
    options = dict(model_name="all-MiniLM-L6-v2", max_seq_length=256, tokens_per_batch=1024, device="cpu",
                   threads=1, state_dir=tmp_path / "state" / name)
    options.update(settings)
    return embedding.embed_sample(parquet=parquet, output=tmp_path / f"{name}.npy",
                                  metadata=tmp_path / f"{name}.json", **options)


def test_iter_units_reads_units_across_row_groups_and_skips_completed_ones(tmp_path):
    texts = [f"text {i}" for i in range(47)]
    parquet = write_sample(tmp_path / "s.parquet", texts, row_group_size=7)
    units = list(embedding.iter_units(parquet, 5))
    assert [u for u, _ in units] == list(range(10))
    assert [t for _, unit in units for t in unit] == texts and all(len(u) == 5 for _, u in units[:-1])
    assert list(embedding.iter_units(parquet, 5, first_unit=3)) == units[3:]  # starts inside row group 2
    assert list(embedding.iter_units(parquet, 100)) == [(0, texts)]


@pytest.mark.slow
def test_a_demo_sized_sample_gives_the_bytes_of_embed_texts(tmp_path, model):
    """One unit: the batches of embed_texts over the whole sample, so the demo's embeddings are
    those written before units existed (np.save of embed_texts' array)."""
    import io

    texts = sample_texts(300)
    parquet = write_sample(tmp_path / "s.parquet", texts, row_group_size=128)
    reference, _ = embedding.embed_texts(model, texts, tokens_per_batch=1024)
    buffer = io.BytesIO()
    np.save(buffer, reference)
    record = embed(tmp_path, parquet, "e")
    assert (tmp_path / "e.npy").read_bytes() == buffer.getvalue()
    assert record["units"] == 1 and record["compute_dtype"] == "float32" and record["count"] == 300
    assert not (tmp_path / "state" / "e").exists()


@pytest.mark.slow
def test_units_match_encode_and_prefetching_changes_nothing(tmp_path, model):
    texts = sample_texts(40, seed=1)
    parquet = write_sample(tmp_path / "s.parquet", texts)
    record = embed(tmp_path, parquet, "e", unit_texts=7)
    assert record["units"] == 6 and record["resumed_units"] == 0
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), model.encode(texts, normalize_embeddings=True), atol=1e-5)
    plain = list(embedding._prepared(model, embedding.iter_units(parquet, 7), prefetch=False))
    ahead = list(embedding._prepared(model, embedding.iter_units(parquet, 7), prefetch=True))
    assert [(u, n, t.input_ids) for u, n, t in plain] == [(u, n, t.input_ids) for u, n, t in ahead]


@pytest.mark.slow
def test_a_failed_job_leaves_no_output_and_the_rerun_resumes(tmp_path, monkeypatch):
    texts = sample_texts(60, seed=2)
    parquet = write_sample(tmp_path / "s.parquet", texts, row_group_size=16)
    embed(tmp_path, parquet, "full", unit_texts=8)
    encode, calls = embedding.encode_tokens, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated crash in unit 3")
        return encode(*args, **kwargs)

    monkeypatch.setattr(embedding, "encode_tokens", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed(tmp_path, parquet, "e", unit_texts=8)
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "e.json").exists()
    progress = json.loads((tmp_path / "state/e/progress.json").read_text())
    assert [u["unit"] for u in progress["units"]] == [0, 1, 2]
    monkeypatch.setattr(embedding, "encode_tokens", encode)
    record = embed(tmp_path, parquet, "e", unit_texts=8)
    assert record["resumed_units"] == 3 and record["units"] == 8 and record["count"] == 60
    assert (tmp_path / "e.npy").read_bytes() == (tmp_path / "full.npy").read_bytes()
    assert not (tmp_path / "state/e").exists()


@pytest.mark.slow
def test_changed_settings_or_input_start_again(tmp_path, monkeypatch):
    parquet = write_sample(tmp_path / "s.parquet", sample_texts(30, seed=3))
    encode = embedding.encode_tokens

    def crash_after_two_units(*args, **kwargs):
        if crash_after_two_units.calls == 2:
            raise RuntimeError("stop")
        crash_after_two_units.calls += 1
        return encode(*args, **kwargs)

    for change in ({"tokens_per_batch": 2048}, {"unit_texts": 6}):
        crash_after_two_units.calls = 0
        monkeypatch.setattr(embedding, "encode_tokens", crash_after_two_units)
        with pytest.raises(RuntimeError):
            embed(tmp_path, parquet, "e", unit_texts=8)
        monkeypatch.setattr(embedding, "encode_tokens", encode)
        record = embed(tmp_path, parquet, "e", **{"unit_texts": 8, **change})
        assert record["resumed_units"] == 0, change
    crash_after_two_units.calls = 0
    monkeypatch.setattr(embedding, "encode_tokens", crash_after_two_units)
    with pytest.raises(RuntimeError):
        embed(tmp_path, parquet, "e", unit_texts=8)
    monkeypatch.setattr(embedding, "encode_tokens", encode)
    write_sample(tmp_path / "s.parquet", sample_texts(30, seed=4))  # the sample was drawn again
    assert embed(tmp_path, parquet, "e", unit_texts=8)["resumed_units"] == 0


KILLED_JOB = """
import sys
from analysis.similarity.embedding import embed_sample
embed_sample(parquet=sys.argv[1], output=sys.argv[2], metadata=sys.argv[3], model_name="all-MiniLM-L6-v2",
             max_seq_length=256, tokens_per_batch=1024, device="cpu", threads=1, unit_texts=8,
             state_dir=sys.argv[4])
"""


@pytest.mark.slow
def test_a_job_killed_mid_corpus_resumes_to_the_same_bytes(tmp_path):
    import signal
    import time

    texts = sample_texts(240, seed=5, max_words=80)
    parquet = write_sample(tmp_path / "s.parquet", texts, row_group_size=50)
    state = tmp_path / "state" / "killed"
    out, meta = tmp_path / "killed.npy", tmp_path / "killed.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    job = subprocess.Popen([sys.executable, "-c", KILLED_JOB, str(parquet), str(out), str(meta), str(state)],
                           env=env, stderr=subprocess.DEVNULL)
    progress, done, deadline = state / "progress.json", 0, time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        if progress.is_file():
            try:
                done = len(json.loads(progress.read_text())["units"])
            except (OSError, ValueError):
                done = 0
            if done >= 1:
                break
        time.sleep(0.02)
    assert job.poll() is None, "the job ended before it could be killed"
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert not out.exists() and not meta.exists()
    done = len(json.loads(progress.read_text())["units"])
    assert 1 <= done < 30
    record = embed(tmp_path, parquet, "killed", unit_texts=8)
    assert record["resumed_units"] == done and record["units"] == 30
    embed(tmp_path, parquet, "uninterrupted", unit_texts=8)
    assert out.read_bytes() == (tmp_path / "uninterrupted.npy").read_bytes()


def test_dtype_auto_is_float32_on_cpu_and_unknown_dtypes_are_named():
    assert embedding.resolve_dtype("auto", "cpu") == "float32"
    assert embedding.resolve_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(embedding.PipelineError, match="similarity.dtype: unknown dtype 'float8'"):
        embedding.resolve_dtype("float8", "cpu")


def test_bfloat16_embeddings_are_float32_and_close(tmp_path, model):
    """The precision a GPU would use, here on CPU: float32 output, rows of unit norm, near float32."""
    texts = sample_texts(20, seed=6)
    parquet = write_sample(tmp_path / "s.parquet", texts)
    record = embed(tmp_path, parquet, "bf16", dtype="bfloat16")
    ours = np.load(tmp_path / "bf16.npy")
    assert record["compute_dtype"] == "bfloat16" and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    reference = model.encode(texts, normalize_embeddings=True)
    assert (ours * reference).sum(axis=1).min() > 0.99  # cosine similarity to the float32 embedding


def test_tokenising_a_prefix_gives_the_ids_of_the_whole_text(model):
    """Texts longer than prefix_chars are tokenised from a prefix cut at a space: same ids, same
    truncation count, also for texts without spaces, with odd whitespace, CJK, accents and sigma."""
    rng = np.random.default_rng(7)
    pieces = "the treaty was signed ΟΔΟΣ Σίσυφος naïve café 東京大学 x^2+y^2 \\alpha_{i} http://a.org/b?c=d".split()
    separators = [" ", " ", "  ", "\n", "\t", " \u3000 ", "\u00a0", " \x1f"]

    def text(i):
        k = int(rng.integers(1, 700))
        body = "".join(p + s for p, s in zip(rng.choice(pieces, size=k), rng.choice(separators, size=k)))
        if i % 5 == 0:
            body = "a" * int(rng.integers(100, 4000)) + " " + body  # one long word first
        if i % 7 == 0:
            body = body.replace(" ", "")
        return body

    texts = [text(i) for i in range(150)] + ["short", " " * 3000 + "x", "word " * 2000]
    prefix = embedding.prefix_chars(model)
    assert prefix == 8 * (model.max_seq_length + 1)
    assert sum(len(t) > prefix for t in texts) > 100
    whole, cut = embedding.tokenize(model, texts), embedding.tokenize(model, texts, prefix)
    assert cut.input_ids == whole.input_ids and cut.n_truncated == whole.n_truncated > 50


def test_tokenisers_that_are_not_word_local_are_tokenised_whole():
    from types import SimpleNamespace

    from tokenizers import Tokenizer, models, pre_tokenizers

    byte_level = Tokenizer(models.BPE())
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel(use_regex=False)  # the whole text is one piece
    unsplit = Tokenizer(models.Unigram())
    unsplit.pre_tokenizer = pre_tokenizers.Metaspace(split=False)
    split = Tokenizer(models.Unigram())
    split.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Digits()])
    fake = lambda backend: SimpleNamespace(tokenizer=SimpleNamespace(backend_tokenizer=backend), max_seq_length=128)
    assert embedding.prefix_chars(fake(byte_level)) is None and embedding.prefix_chars(fake(unsplit)) is None
    assert embedding.prefix_chars(fake(split)) is None  # Digits is not on the list: not assumed
    assert embedding.prefix_chars(SimpleNamespace(tokenizer=object(), max_seq_length=128)) is None
