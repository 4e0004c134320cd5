"""Source-corpus readers: jsonl / txt / parquet files and Hugging Face datasets (local and hub ids)."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.corpora.sources import ReadStats, iter_corpus, resolve_files
from analysis.errors import CorpusError

TEXTS = ["first text", "second\n\ntext", "third"]


def read(spec):
    stats = ReadStats()
    return list(iter_corpus(spec, stats)), stats


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_jsonl_reads_text_field_and_checksums_the_file(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": t, "id": i} for i, t in enumerate(TEXTS)])
    texts, stats = read({"format": "jsonl", "path": str(path), "text_field": "text"})
    assert texts == TEXTS
    assert stats.files == [{"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]


def test_gzipped_jsonl_checksums_the_compressed_file(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps({"t": t}) + "\n" for t in TEXTS).encode()))
    texts, stats = read({"format": "jsonl", "path": str(path), "text_field": "t"})
    assert texts == TEXTS
    assert stats.files[0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_jsonl_skips_empty_texts_and_counts_them(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}, {"text": "  "}, {"text": "b"}])
    texts, stats = read({"format": "jsonl", "path": str(path)})
    assert texts == ["a", "b"] and stats.n_records == 3 and stats.n_empty == 1


def test_jsonl_missing_field_names_file_line_and_fields(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}, {"body": "b"}])
    with pytest.raises(CorpusError, match=rf"{path}:2: no field 'text' \(found: body\)"):
        read({"format": "jsonl", "path": str(path)})


def test_jsonl_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(CorpusError, match=rf"{path}:2: not valid JSON"):
        read({"format": "jsonl", "path": str(path)})


@pytest.mark.parametrize(
    "unit, expected",
    [
        ("line", ["a b", "c", "d"]),
        ("paragraph", ["a b\nc", "d"]),
        ("file", ["a b\nc\n\nd"]),
    ],
)
def test_txt_units(tmp_path, unit, expected):
    (tmp_path / "doc.txt").write_text("a b\nc\n\nd\n", encoding="utf-8")
    texts, _ = read({"format": "txt", "path": str(tmp_path / "doc.txt"), "txt_unit": unit})
    assert texts == expected


def test_directory_reads_matching_files_sorted(tmp_path):
    for name, text in [("b.txt", "second"), ("a.txt", "first"), ("notes.md", "ignored")]:
        (tmp_path / name).write_text(text, encoding="utf-8")
    texts, stats = read({"format": "txt", "path": str(tmp_path), "txt_unit": "file"})
    assert texts == ["first", "second"] and len(stats.files) == 2


def test_glob_paths(tmp_path):
    for i in range(3):
        write_jsonl(tmp_path / f"shard-{i}.jsonl", [{"text": f"t{i}"}])
    texts, _ = read({"format": "jsonl", "path": str(tmp_path / "shard-*.jsonl")})
    assert texts == ["t0", "t1", "t2"]


def test_missing_path_is_named(tmp_path):
    with pytest.raises(CorpusError, match=f"corpus path not found: {tmp_path}/nope"):
        resolve_files(str(tmp_path / "nope"), "jsonl")


def test_directory_without_matching_files_is_named(tmp_path):
    with pytest.raises(CorpusError, match=f"no parquet files .* in directory {tmp_path}"):
        resolve_files(str(tmp_path), "parquet")


def test_parquet_column(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": TEXTS, "n": [1, 2, 3]}), path)
    texts, stats = read({"format": "parquet", "path": str(path), "text_field": "content"})
    assert texts == TEXTS and stats.files[0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_parquet_missing_column_lists_columns(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": TEXTS}), path)
    with pytest.raises(CorpusError, match=rf"{path}: no column 'text' \(columns: content\)"):
        read({"format": "parquet", "path": str(path)})


def test_hf_local_dataset_directory_streams_through_load_dataset(tmp_path):
    """The hub-id code path (datasets.load_dataset) on a local dataset repository layout."""
    data = tmp_path / "my_dataset" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.table({"text": TEXTS}), data / "train-00000-of-00001.parquet")
    spec = {"format": "hf", "path": str(tmp_path / "my_dataset"), "hf": {"split": "train", "streaming": True}}
    texts, stats = read(spec)
    assert texts == TEXTS
    assert stats.hf["loaded_with"] == "load_dataset" and stats.files


def test_hf_save_to_disk_directory(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(tmp_path / "saved"))
    texts, stats = read({"format": "hf", "path": str(tmp_path / "saved"), "hf": {}})
    assert texts == TEXTS and stats.hf["loaded_with"] == "load_from_disk"


def test_hf_hub_id_offline_fails_with_instructions_not_a_traceback(tmp_path):
    """Run in a fresh interpreter with the hub marked offline, as on a cluster node without network."""
    code = textwrap.dedent(
        """
        from analysis.corpora.sources import ReadStats, iter_corpus
        from analysis.errors import CorpusError
        spec = {"format": "hf", "path": "Skylion007/openwebtext", "hf": {"split": "train"}}
        try:
            next(iter(iter_corpus(spec, ReadStats())))
        except CorpusError as exc:
            print(exc)
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cannot load Hugging Face dataset 'Skylion007/openwebtext'" in out.stdout
    assert "hf download Skylion007/openwebtext --repo-type dataset" in out.stdout
    assert "HF_DATASETS_OFFLINE=1" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_corrupt_gzip_names_the_file(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    data = gzip.compress("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(500)).encode())
    path.write_bytes(data[:30] + bytes(40) + data[70:])
    with pytest.raises(CorpusError, match=f"cannot read {path}: "):
        read({"format": "jsonl", "path": str(path)})


@pytest.mark.parametrize(
    "path, remote",
    [("hf://datasets/a/b/*.jsonl", True), ("https://x.org/a.json.gz", True), ("file:///data/a.jsonl", True),
     ("/data/a/*.jsonl", False), ("data/urls/v1_6-sample.txt", False)],
)
def test_remote_paths_are_urls(path, remote):
    from analysis.corpora.sources import is_remote

    assert is_remote(path) is remote
