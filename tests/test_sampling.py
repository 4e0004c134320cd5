"""Sampling: the paper's 5% / 50,000 rule, determinism, uniformity, and failures that keep old outputs."""

from __future__ import annotations

import json
import random
from collections import Counter

import pyarrow.parquet as pq
import pytest

from analysis.corpora.sampling import domain_sample_size, reservoir_sample, sample_domain, sample_source
from analysis.errors import CorpusError
from analysis.io import derive_seed
from tests.builders import write_domain_dir


@pytest.mark.parametrize(
    "n_available, fraction, max_texts, min_texts, expected",
    [
        (10_000, 0.05, 50_000, 0, 500),  # 5% of a mid-size domain
        (2_000_000, 0.05, 50_000, 0, 50_000),  # 5% would be 100k: capped at 50,000
        (1_000_000, 0.05, 50_000, 0, 50_000),  # exactly at the cap
        (999_999, 0.05, 50_000, 0, 50_000),  # ceil(49,999.95)
        (999_979, 0.05, 50_000, 0, 49_999),
        (101, 0.05, 50_000, 0, 6),  # ceil, never zero for a non-empty domain
        (1_300, 0.05, 50_000, 500, 500),  # small domain raised to min_texts
        (300, 0.05, 50_000, 500, 300),  # ... but never above what exists
        (0, 0.05, 50_000, 500, 0),
    ],
)
def test_domain_sample_size_rule(n_available, fraction, max_texts, min_texts, expected):
    assert domain_sample_size(n_available, fraction, max_texts, min_texts) == expected


def test_reservoir_is_deterministic_and_in_stream_order():
    a, n = reservoir_sample(range(1000), 10, random.Random(3))
    b, _ = reservoir_sample(range(1000), 10, random.Random(3))
    assert a == b and n == 1000
    assert [i for i, _ in a] == sorted(i for i, _ in a)
    assert all(i == item for i, item in a)


def test_reservoir_is_uniform():
    """Every position is drawn with probability k/n: counts over 4,000 seeded runs stay within 5 sigma."""
    n, k, runs = 50, 5, 4000
    counts = Counter()
    for seed in range(runs):
        sample, _ = reservoir_sample(range(n), k, random.Random(seed))
        counts.update(item for _, item in sample)
    expected = runs * k / n
    sigma = (runs * (k / n) * (1 - k / n)) ** 0.5
    assert all(abs(counts[i] - expected) < 5 * sigma for i in range(n)), counts


def test_reservoir_shorter_stream_returns_everything():
    sample, n = reservoir_sample("abc", 10, random.Random(0))
    assert [x for _, x in sample] == list("abc") and n == 3


def _domain(tmp_path, n_lines, domain="hep-ex"):
    text = "".join(f"paragraph {i}\n" + ("\n" if i % 7 == 6 else "") for i in range(n_lines))
    write_domain_dir(tmp_path / "m2d2", domain, {"train": text, "valid": "v\n", "test": "t\n"})
    return tmp_path / "m2d2"


def _sample_domain(root, out, domain="hep-ex", seed=7, **overrides):
    kwargs = dict(
        root=root, domain=domain, splits=["train"], document_policy="line", fraction=0.05,
        max_texts=50, min_texts=0, base_seed=seed, max_invalid_fraction=0.01,
        output=out / f"{domain}.parquet", provenance=out / f"{domain}.json",
    )
    kwargs.update(overrides)
    return sample_domain(**kwargs)


def test_sample_domain_applies_rule_and_records_provenance(tmp_path):
    root = _domain(tmp_path, 600)
    record = _sample_domain(root, tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "hep-ex.parquet").to_pydict()
    assert record["n_available"] == 600 and record["n_sampled"] == 30 == len(table["text"])
    assert all(text == f"paragraph {i}" for text, i in zip(table["text"], table["source_index"]))
    assert set(table["split"]) == {"train"}
    saved = json.loads((tmp_path / "out" / "hep-ex.json").read_text())
    assert saved == record
    assert saved["files"][0]["blank_lines"] == 600 // 7
    assert saved["seed"] == derive_seed(7, "domain", "hep-ex")
    assert saved["portion"] == "s2orc" and saved["reader"]["document_policy"] == "line"


def test_sample_domain_caps_at_max_texts(tmp_path):
    root = _domain(tmp_path, 2000)
    assert _sample_domain(root, tmp_path / "out")["n_sampled"] == 50  # 5% = 100, capped at 50


def test_sample_domain_is_deterministic_and_seed_dependent(tmp_path):
    root = _domain(tmp_path, 600)
    _sample_domain(root, tmp_path / "a")
    _sample_domain(root, tmp_path / "b")
    _sample_domain(root, tmp_path / "c", seed=8)
    a, b, c = (pq.read_table(tmp_path / d / "hep-ex.parquet").to_pydict() for d in "abc")
    assert a == b and a != c
    assert (tmp_path / "a" / "hep-ex.json").read_text() == (tmp_path / "b" / "hep-ex.json").read_text()


def test_each_domain_has_its_own_seed():
    """Adding a domain to the config cannot change another domain's sample."""
    assert derive_seed(7, "domain", "hep-ex") != derive_seed(7, "domain", "hep-lat")
    assert derive_seed(7, "domain", "hep-ex") == derive_seed(7, "domain", "hep-ex")


def test_failed_domain_sample_keeps_previous_output(tmp_path):
    root = _domain(tmp_path, 600)
    out = tmp_path / "out"
    _sample_domain(root, out)
    before = (out / "hep-ex.parquet").read_bytes()
    (root / "hep-ex" / "train.txt").write_bytes(b"\xff\xfe\n\x80\n")
    with pytest.raises(CorpusError, match="not UTF-8 text"):
        _sample_domain(root, out)
    assert (out / "hep-ex.parquet").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


def _jsonl(path, n):
    path.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(n)))
    return path


def test_sample_source_is_uniform_deterministic_and_recorded(tmp_path):
    spec = {"format": "jsonl", "path": str(_jsonl(tmp_path / "c.jsonl", 500)), "text_field": "text", "n_texts": 40}
    kwargs = dict(name="web", spec=spec, base_seed=1, progress=False)
    rec = sample_source(**kwargs, output=tmp_path / "a.parquet", provenance=tmp_path / "a.json")
    sample_source(**kwargs, output=tmp_path / "b.parquet", provenance=tmp_path / "b.json")
    a = pq.read_table(tmp_path / "a.parquet").to_pydict()
    assert a == pq.read_table(tmp_path / "b.parquet").to_pydict()
    assert len(a["text"]) == 40 and all(t == f"doc {i}" for t, i in zip(a["text"], a["source_index"]))
    assert rec["n_available"] == 500 and rec["files"][0]["sha256"] and rec["seed"] == derive_seed(1, "source", "web")


def test_sample_larger_than_corpus_is_an_error_and_keeps_previous_output(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", 30)
    out, prov = tmp_path / "s.parquet", tmp_path / "s.json"
    out.write_bytes(b"previous result")
    spec = {"format": "jsonl", "path": str(path), "n_texts": 31}
    with pytest.raises(CorpusError, match=rf"corpus 'web' \({path}\) has 30 non-empty texts but corpora.web.n_texts asks for 31"):
        sample_source(name="web", spec=spec, base_seed=1, output=out, provenance=prov, progress=False)
    assert out.read_bytes() == b"previous result" and not prov.exists()


@pytest.mark.parametrize("policy", ["line", "paragraph"])
@pytest.mark.parametrize("archived", [False, True])
def test_streamed_domain_sample_equals_drawing_from_the_whole_pool(tmp_path, policy, archived):
    """Two streamed passes give the texts, order and indices that listing every text and drawing
    gave before (the pre-streaming implementation, written out here)."""
    from analysis.corpora import m2d2
    from tests.builders import awkward_lines, write_domain_archive

    splits = {split: "\n".join(awkward_lines(300, seed)) + "\n" for seed, split in enumerate(m2d2.SPLITS)}
    root = tmp_path / "m2d2"
    (write_domain_archive if archived else write_domain_dir)(root, "math.AG", splits)
    record = _sample_domain(root, tmp_path / "out", domain="math.AG", splits=["train", "test"],
                            document_policy=policy, fraction=0.2, max_texts=10_000)
    pool = [(split, i, text) for split in ("train", "test")
            for i, text in enumerate(m2d2.documents(m2d2.read_split(root, "math.AG", split).lines, policy))]
    chosen = sorted(random.Random(derive_seed(7, "domain", "math.AG")).sample(range(len(pool)), record["n_sampled"]))
    table = pq.read_table(tmp_path / "out" / "math.AG.parquet").to_pydict()
    assert list(zip(table["split"], table["source_index"], table["text"])) == [pool[i] for i in chosen]
    assert record["n_available"] == len(pool) and record["n_sampled"] == max(1, -(-len(pool) // 5))
    assert [f["texts"] for f in record["files"]] == [sum(1 for s, _, _ in pool if s == split)
                                                      for split in ("train", "test")]
