"""Resources of the jobs whose cost follows their input (analysis/resources.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis import resources as res

CONFIG = {
    "corpora": {"web": {"n_texts": 930_000}},
    "sampling": {"domain_max_texts": 50_000},
    "similarity": {"unit_texts": 16384, "gpus": 1, "max_seq_length": 256, "blocks": 100,
                   "chunk_rows": 16384, "resamples": 200,
                   "fd_extrapolation": {"points": 5, "orderings": 8}},
}


def test_shapes_and_rows_come_from_headers_and_footers(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((1234, 16), dtype=np.float32))
    assert res.npy_shape(tmp_path / "e.npy") == (1234, 16)
    assert res.npy_shape(tmp_path / "missing.npy") is None
    pq.write_table(pa.table({"text": ["a", "b", "c"]}), tmp_path / "s.parquet")
    assert res.parquet_rows(tmp_path / "s.parquet") == 3 and res.parquet_rows(tmp_path / "none.parquet") is None


def test_estimates_follow_the_sizes_that_drive_them():
    # Statistics: the block outer products (118 MB at the paper's scale) are the bulk.
    paper = res.statistics_mem_mb(930_000, 384, 100, 16384)
    assert 100 * 384 * 384 * 8 / 1e6 < paper < 2000
    assert res.statistics_mem_mb(930_000, 768, 100, 16384) - paper > 3 * 118  # 4x the outer products
    assert res.statistics_runtime_min(930_000, 768) > res.statistics_runtime_min(930_000, 384)
    assert res.statistics_runtime_min(930_000, 384, attempt=2) == 2 * res.statistics_runtime_min(930_000, 384)
    # Distance: two sets of block statistics plus the domain.
    assert res.distance_mem_mb(50_000, 384, 100, 16384) > res.distance_mem_mb(300, 384, 100, 16384)
    assert res.distance_runtime_min(300, 768, 200) > res.distance_runtime_min(300, 384, 200)
    # Embedding: memory flat in the corpus size, runtime linear; a GPU is faster than two threads.
    assert res.embed_mem_mb(16384, 930_000, 1) == res.embed_mem_mb(16384, 9_300_000, 1)
    assert res.embed_mem_mb(16384, 930_000, 0) < res.embed_mem_mb(16384, 930_000, 1)  # no prefetch, no CUDA
    assert res.embed_runtime_min(930_000, 256, 4, 1) < res.embed_runtime_min(930_000, 256, 2, 0)
    assert res.embed_runtime_min(930_000, 256, 4, 1, attempt=3) == 3 * res.embed_runtime_min(930_000, 256, 4, 1)


def test_rule_functions_use_the_inputs_when_they_exist_and_the_config_before(tmp_path):
    wildcards = SimpleNamespace(kind="sources", name="web", corpus="web", domain="hep-ex")
    parquet, corpus, domain = tmp_path / "web.parquet", tmp_path / "web.npy", tmp_path / "hep-ex.npy"
    planned = {
        "embed": res.embed_runtime(CONFIG, wildcards, [str(parquet)], 4, 1),
        "statistics": res.statistics_mem(CONFIG, wildcards, SimpleNamespace(embeddings=str(corpus))),
        "distance": res.distance_mem(CONFIG, wildcards, SimpleNamespace(domain=str(domain))),
    }
    assert planned["embed"] == res.embed_runtime_min(930_000, 256, 4, 1)
    assert planned["statistics"] == res.statistics_mem_mb(930_000, 384, 100, 16384)
    assert planned["distance"] == res.distance_mem_mb(50_000, 384, 100, 16384)
    pq.write_table(pa.table({"text": ["a"] * 10}), parquet)
    np.save(corpus, np.zeros((10, 768), dtype=np.float32))
    np.save(domain, np.zeros((5, 768), dtype=np.float32))
    assert res.embed_runtime(CONFIG, wildcards, [str(parquet)], 4, 1) == res.embed_runtime_min(10, 256, 4, 1)
    assert res.embed_mem(CONFIG, wildcards, [str(parquet)]) == res.embed_mem_mb(16384, 10, 1)
    statistics_input = SimpleNamespace(embeddings=str(corpus))
    assert res.statistics_mem(CONFIG, wildcards, statistics_input) == res.statistics_mem_mb(10, 768, 100, 16384)
    assert res.statistics_runtime(CONFIG, wildcards, statistics_input, 2) == res.statistics_runtime_min(10, 768, 2)
    distance_input = SimpleNamespace(domain=str(domain))
    assert res.distance_mem(CONFIG, wildcards, distance_input) == res.distance_mem_mb(5, 768, 100, 16384)
    assert res.distance_runtime(CONFIG, wildcards, distance_input, 1) == res.distance_runtime_min(5, 768, 232, 1)
    domains = SimpleNamespace(kind="domains", name="hep-ex")
    assert res.sample_rows(CONFIG, "domains", "hep-ex", tmp_path / "nope.parquet") == 50_000
    assert res.embed_mem(CONFIG, domains, [str(tmp_path / "nope.parquet")]) == res.embed_mem_mb(16384, 50_000, 1)


def test_data_jobs_memory_follows_what_they_keep_and_runtime_the_text():
    gb = 1_000_000_000
    # tokenize_domain: flat in the domain's size; the runtime grows with it and falls with threads.
    assert res.tokenize_domain_mem_mb(2) == res.tokenize_domain_mem_mb(2) < 4000
    assert res.tokenize_domain_runtime(5 * gb, 2) > res.tokenize_domain_runtime(gb // 2, 2)
    assert res.tokenize_domain_runtime(5 * gb, 8) < res.tokenize_domain_runtime(5 * gb, 2)
    # sample_domain: 5% of the text up to the 50,000-text cap (texts taken as 8 kB at most).
    paper = dict(fraction=0.05, max_texts=50_000, min_texts=0)
    assert res.sample_domain_mem_mb(10 * gb, **paper) == res.sample_domain_mem_mb(20 * gb, **paper)
    assert res.sample_domain_mem_mb(100_000_000, **paper) < res.sample_domain_mem_mb(5 * gb, **paper) < 8000
    assert res.sampled_bytes(1000, 0.05, 50_000, 300) == 1000  # a small domain is kept whole
    assert res.sample_domain_runtime(5 * gb) > res.sample_domain_runtime(gb // 2)


def test_an_archive_text_size_comes_from_the_gzip_trailer(tmp_path):
    from analysis.corpora import m2d2
    from tests.builders import write_domain_archive

    text = "a paragraph of text that compresses well\n" * 50_000
    archive = write_domain_archive(tmp_path, "math.AG", {"train": text, "valid": "v\n", "test": "t\n"})
    size = m2d2.archive_text_bytes(archive)
    assert archive.stat().st_size < size and abs(size - len(text)) < 10_000  # the tar's headers and padding
    assert m2d2.text_bytes(tmp_path, "math.AG") == size
    assert m2d2.text_bytes(tmp_path, "absent") == 0
