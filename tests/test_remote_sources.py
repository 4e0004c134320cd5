"""Remote source corpora, offline: the paper preset's Dolma and RedPajama specs read from local
mirrors laid out as their repositories publish them.

* RedPajama-Data-1T-Sample is a dataset repository of top-level ``*.jsonl`` files (plus a loading
  script that is never run). The preset's ``hf://datasets/...`` glob goes through fsspec exactly as on
  a connected node; here fsspec's ``hf`` protocol is pointed at a local copy of the repository.
* Dolma publishes ``urls/v1_6-sample.txt``, a list of ``.json.gz`` shard URLs. The list is read the
  same way; its ``file://`` entries go through the same urllib reader as ``https://`` ones.
* Offline, the staged layout (``hf download`` of the repository files, ``wget -i`` of the list) is
  read by changing only the corpus path, and gives the same sample.
* huggingface_hub's own HfFileSystem is exercised against a small fake hub (HF_ENDPOINT) that serves
  the same mirror over HTTP: the repository API calls, the tree listing and the streamed downloads.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import urllib.parse

import pyarrow.parquet as pq
import pytest
import yaml
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import _registry as fsspec_registry

from analysis.corpora import sources
from analysis.corpora.sampling import sample_source
from analysis.corpora.sources import ReadStats, iter_corpus
from analysis.errors import CorpusError
from tests.builders import REPO

PRESET = yaml.safe_load((REPO / "presets" / "paper.yaml").read_text())["corpora"]
RP_REPO = "datasets/togethercomputer/RedPajama-Data-1T-Sample"
RP_FILES = ["arxiv_sample.jsonl", "book_sample.jsonl", "c4_sample.jsonl", "cc_2023-06_sample.jsonl"]
DOLMA_HOST = "https://olmo-data.org/dolma-v1_6-8B-sample"
DOLMA_SHARDS = [f"v1_5r2_sample-{i:04d}.json.gz" for i in range(3)]


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_hub(monkeypatch, root):
    """Point fsspec's ``hf://`` protocol at ``root`` (a local copy of the hub's path layout)."""

    class LocalHub(DirFileSystem):
        protocol = "hf"
        cachable = False

        def __init__(self, **kwargs):
            super().__init__(path=str(root), fs=LocalFileSystem())

    monkeypatch.setitem(fsspec_registry, "hf", LocalHub)


def write_redpajama_repo(directory, n_per_file=30):
    """The repository's top level: one .jsonl per slice (text + a slice-specific meta), README, script."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "README.md").write_text("# RedPajama 1T Sample\n")
    (directory / "RedPajama-Data-1T-Sample.py").write_text("raise RuntimeError('never run')\n")
    for name in RP_FILES:
        slice_ = name.removesuffix("_sample.jsonl")
        with open(directory / name, "w", encoding="utf-8") as handle:
            for i in range(n_per_file):
                meta = {"arxiv_id": f"{i}"} if slice_ == "arxiv" else {"url": f"https://x/{i}", "language": "en"}
                handle.write(json.dumps({"text": f"{slice_} document {i}", "meta": meta}) + "\n")
    return directory


def write_dolma_shards(directory, n_per_shard=25):
    """Dolma-format shards: gzipped JSON lines with id, text, source, added, created, metadata."""
    directory.mkdir(parents=True, exist_ok=True)
    for shard in DOLMA_SHARDS:
        lines = [
            json.dumps({"id": f"{shard}-{i}", "text": f"{shard} text {i}", "source": "c4", "added": "2023-10-01",
                        "created": "2019-04-01", "metadata": {"length": i}})
            for i in range(n_per_shard)
        ]
        lines.insert(3, json.dumps({"id": "empty", "text": "   ", "source": "c4"}))  # skipped and counted
        (directory / shard).write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return [directory / shard for shard in DOLMA_SHARDS]


def spec(name, **changes):
    return {**PRESET[name], "text_field": "text", **changes}


def sample(tmp_path, tag, corpus_spec, name="corpus"):
    record = sample_source(name=name, spec=corpus_spec, base_seed=7, output=tmp_path / f"{tag}.parquet",
                           provenance=tmp_path / f"{tag}.json", progress=False)
    return record, pq.read_table(tmp_path / f"{tag}.parquet").to_pydict()


def test_preset_names_the_published_files_and_no_loading_script():
    assert PRESET["redpajama"]["path"] == f"hf://{RP_REPO}/*.jsonl" and PRESET["redpajama"]["format"] == "jsonl"
    assert PRESET["dolma"]["path"] == "hf://datasets/allenai/dolma/urls/v1_6-sample.txt"
    assert PRESET["dolma"]["url_list"] is True and PRESET["dolma"]["format"] == "jsonl"
    assert PRESET["openwebtext"]["hf"]["revision"] == "refs/convert/parquet"


def test_redpajama_hub_glob_and_staged_copy_give_the_same_sample(tmp_path, monkeypatch):
    repo = write_redpajama_repo(tmp_path / "hub" / RP_REPO)
    fake_hub(monkeypatch, tmp_path / "hub")

    record, table = sample(tmp_path, "hub", spec("redpajama", n_texts=50))
    again, table_again = sample(tmp_path, "hub-again", spec("redpajama", n_texts=50))
    assert table == table_again and len(table["text"]) == 50
    assert record["n_available"] == 4 * 30 and record["reader"]["path"] == f"hf://{RP_REPO}/*.jsonl"
    # Every .jsonl file of the repository is read (sorted), nothing else; each with its checksum.
    assert record["files"] == [{"path": f"hf://{RP_REPO}/{n}", "sha256": sha256(repo / n)} for n in sorted(RP_FILES)]
    assert {t.split(" document")[0] for t in table["text"]} == {"arxiv", "book", "c4", "cc_2023-06"}

    # Offline: `hf download ... --include '*.jsonl' --local-dir DIR` and path DIR/*.jsonl.
    staged, staged_table = sample(tmp_path, "staged", spec("redpajama", n_texts=50, path=f"{repo}/*.jsonl"))
    assert staged_table == table
    assert [f["sha256"] for f in staged["files"]] == [f["sha256"] for f in record["files"]]


def test_dolma_url_list_on_the_hub_reads_every_listed_shard(tmp_path, monkeypatch):
    shards = write_dolma_shards(tmp_path / "olmo-data")
    listing = tmp_path / "hub/datasets/allenai/dolma/urls/v1_6-sample.txt"
    listing.parent.mkdir(parents=True)
    listing.write_text("".join(f"{p.as_uri()}\n" for p in shards) + "\n")
    fake_hub(monkeypatch, tmp_path / "hub")

    record, table = sample(tmp_path, "hub", spec("dolma", n_texts=40))
    assert record["reader"]["url_list"] is True and record["n_available"] == 3 * 25
    assert record["n_records"] == 3 * 26 and record["n_empty_skipped"] == 3
    assert record["files"] == [{"path": p.as_uri(), "sha256": sha256(p)} for p in shards]
    assert record["url_list"] == {"path": "hf://datasets/allenai/dolma/urls/v1_6-sample.txt",
                                  "sha256": sha256(listing), "n_files": 3, "n_from_local_mirror": 0}
    assert {t.split(" text")[0] for t in table["text"]} == set(DOLMA_SHARDS)
    assert sample(tmp_path, "again", spec("dolma", n_texts=40))[1] == table


def test_dolma_staged_mirror_reads_listed_urls_from_the_lists_directory(tmp_path):
    """`hf download allenai/dolma urls/v1_6-sample.txt ...` then `wget -i LIST -P DIR/urls`: no network."""
    urls = tmp_path / "dolma/urls"
    shards = write_dolma_shards(urls)
    listing = urls / "v1_6-sample.txt"
    listing.write_text("".join(f"{DOLMA_HOST}/{name}\n" for name in DOLMA_SHARDS))

    record, table = sample(tmp_path, "mirror", spec("dolma", n_texts=40, path=str(listing)))
    assert record["files"] == [
        {"path": str(p), "sha256": sha256(p), "url": f"{DOLMA_HOST}/{p.name}"} for p in shards
    ]
    assert record["url_list"]["n_from_local_mirror"] == 3 and record["n_available"] == 75
    assert {t.split(" text")[0] for t in table["text"]} == set(DOLMA_SHARDS)

    # The same shards listed as file:// URLs (the hub-path test's layout) give the same sample.
    other = tmp_path / "other.txt"
    other.write_text("".join(f"{p.as_uri()}\n" for p in shards))
    assert sample(tmp_path, "uris", spec("dolma", n_texts=40, path=str(other)))[1] == table


def test_listed_file_neither_mirrored_nor_reachable_says_what_to_download(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    urls = tmp_path / "dolma/urls"
    write_dolma_shards(urls)
    listing = urls / "v1_6-sample.txt"
    # Port 9 (discard) refuses at once: the missing shard cannot be fetched.
    listing.write_text(f"http://127.0.0.1:9/dolma/{DOLMA_SHARDS[0]}\nhttp://127.0.0.1:9/dolma/missing-0009.json.gz\n")
    with pytest.raises(CorpusError) as info:
        list(iter_corpus(spec("dolma", path=str(listing)), ReadStats()))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot read http://127.0.0.1:9/dolma/missing-0009.json.gz (URLError")
    assert f"download the listed files into the list's directory (`wget -i {listing} -P {urls}`)" in message


@pytest.mark.parametrize(
    "corpus, expected",
    [
        ("redpajama", [
            "cannot read hf://datasets/togethercomputer/RedPajama-Data-1T-Sample/*.jsonl (OfflineModeIsEnabled",
            "`hf download togethercomputer/RedPajama-Data-1T-Sample --repo-type dataset --include '*.jsonl' "
            "--local-dir DIR`",
            "set the corpus path to DIR/*.jsonl",
        ]),
        ("dolma", [
            "cannot read hf://datasets/allenai/dolma/urls/v1_6-sample.txt (OfflineModeIsEnabled",
            "`hf download allenai/dolma urls/v1_6-sample.txt --repo-type dataset --local-dir DIR`, then "
            "`wget -i DIR/urls/v1_6-sample.txt -P DIR/urls`",
            "set the corpus path to DIR/urls/v1_6-sample.txt",
        ]),
    ],
)
def test_preset_path_offline_fails_in_one_line_naming_what_to_stage(tmp_path, corpus, expected):
    """A fresh interpreter with the hub marked offline, as on a cluster node without network."""
    code = textwrap.dedent(
        f"""
        import yaml
        from analysis.corpora.sources import ReadStats, iter_corpus
        from analysis.errors import CorpusError
        spec = yaml.safe_load(open("presets/paper.yaml"))["corpora"][{corpus!r}]
        try:
            next(iter(iter_corpus(spec, ReadStats())))
        except CorpusError as exc:
            print(exc)
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) == 1 and "Traceback" not in out.stdout + out.stderr
    for part in expected:
        assert part in out.stdout


class _FlakyRangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one file with Range support; the first full GET is cut off halfway."""

    body = b""
    requests: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
        type(self).requests.append(start)
        payload = self.body[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if len(type(self).requests) == 1:
            self.wfile.write(payload[: len(payload) // 2])  # then the connection drops
            self.close_connection = True
            return
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_dropped_http_transfer_resumes_where_it_stopped(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sources, "URL_BACKOFF_S", 0.0)
    lines = [json.dumps({"text": f"web text {i} " + "x" * 200}) for i in range(2000)]
    _FlakyRangeHandler.body = gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)
    _FlakyRangeHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyRangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shard-0000.json.gz"
        stats = ReadStats()
        texts = list(iter_corpus({"format": "jsonl", "path": url}, stats))
    finally:
        server.shutdown()
        server.server_close()
    assert len(texts) == 2000 and texts[-1].startswith("web text 1999 ")
    assert _FlakyRangeHandler.requests[0] == 0 and _FlakyRangeHandler.requests[1] > 0  # resumed, not restarted
    assert stats.files == [{"path": url, "sha256": hashlib.sha256(_FlakyRangeHandler.body).hexdigest()}]


def test_url_list_is_refused_for_the_hf_format():
    with pytest.raises(CorpusError, match="url_list applies to the jsonl, txt and parquet formats"):
        iter_corpus({"format": "hf", "path": "x/y", "url_list": True}, ReadStats())


def test_hub_parquet_files_are_read_through_the_same_filesystem(tmp_path, monkeypatch):
    """format parquet with an hf:// glob (e.g. a dataset's data/*.parquet), seekable reads."""
    import pyarrow as pa

    data = tmp_path / "hub/datasets/someone/web/data"
    data.mkdir(parents=True)
    for i in range(2):
        pq.write_table(pa.table({"text": [f"p{i} {j}" for j in range(5)]}), data / f"train-0000{i}-of-00002.parquet")
    fake_hub(monkeypatch, tmp_path / "hub")
    stats = ReadStats()
    texts = list(iter_corpus({"format": "parquet", "path": "hf://datasets/someone/web/data/*.parquet"}, stats))
    assert texts == [f"p{i} {j}" for i in range(2) for j in range(5)]
    assert [f["path"] for f in stats.files] == [
        f"hf://datasets/someone/web/data/train-0000{i}-of-00002.parquet" for i in range(2)
    ]


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """The few hub endpoints HfFileSystem calls (repo info, tree listing, resolve), from a local
    directory laid out as ``datasets/<owner>/<name>/...``; other paths under it are served as files."""

    root = ""
    seen: list = []

    def do_GET(self):  # noqa: N802
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        type(self).seen.append(path)
        if match := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
            return self._send(json.dumps({"id": match[1], "sha": "a" * 40, "private": False}).encode())
        if match := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/[^/]+/?(.*)", path):
            base = os.path.join(self.root, "datasets", match[1])
            folder = os.path.join(base, match[2])
            entries = [
                {"type": "directory" if os.path.isdir(f) else "file", "oid": "0" * 40, "path": os.path.relpath(f, base),
                 "size": 0 if os.path.isdir(f) else os.path.getsize(f)}
                for f in (os.path.join(folder, n) for n in sorted(os.listdir(folder)))
            ]
            return self._send(json.dumps(entries).encode())
        if match := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
            path = f"/datasets/{match[1]}/{match[2]}"
        file = os.path.join(self.root, path.lstrip("/"))
        if not os.path.isfile(file):
            return self._send(b"{}", status=404)
        with open(file, "rb") as handle:
            self._send(handle.read(), headers={"X-Repo-Commit": "a" * 40})

    def _send(self, body, status=200, headers=None):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_preset_specs_through_huggingface_hubs_filesystem(tmp_path):
    """The preset's two hf:// specs, verbatim, read by HfFileSystem from a fake hub endpoint; Dolma's
    list names http:// shard URLs on the same server (the urllib reader over real HTTP)."""
    mirror = tmp_path / "mirror"
    repo = write_redpajama_repo(mirror / RP_REPO)
    shards = write_dolma_shards(mirror / "dolma-v1_6-8B-sample")
    _FakeHub.root, _FakeHub.seen = str(mirror), []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    listing = mirror / "datasets/allenai/dolma/urls/v1_6-sample.txt"
    listing.parent.mkdir(parents=True)
    listing.write_text("".join(f"{endpoint}/dolma-v1_6-8B-sample/{p.name}\n" for p in shards))
    code = textwrap.dedent(
        """
        import json, sys, yaml
        import pyarrow.parquet as pq
        from analysis.corpora.sampling import sample_source
        out = {}
        for name, n in (("redpajama", 50), ("dolma", 40)):
            spec = {**yaml.safe_load(open("presets/paper.yaml"))["corpora"][name], "n_texts": n}
            record = sample_source(name=name, spec=spec, base_seed=7, output=f"{sys.argv[1]}/{name}.parquet",
                                   provenance=f"{sys.argv[1]}/{name}.json", progress=False)
            out[name] = {"record": record, "text": pq.read_table(f"{sys.argv[1]}/{name}.parquet")["text"].to_pylist()}
        print(json.dumps(out))
        """
    )
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "PATH": "/usr/bin:/bin"}
    try:
        run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                             cwd=REPO, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    redpajama, dolma = out["redpajama"]["record"], out["dolma"]["record"]
    assert redpajama["files"] == [
        {"path": f"hf://{RP_REPO}/{n}", "sha256": sha256(repo / n)} for n in sorted(RP_FILES)
    ]
    assert redpajama["n_available"] == 120 and len(out["redpajama"]["text"]) == 50
    assert dolma["url_list"]["sha256"] == sha256(listing) and dolma["n_available"] == 75
    assert dolma["files"] == [
        {"path": f"{endpoint}/dolma-v1_6-8B-sample/{p.name}", "sha256": sha256(p)} for p in shards
    ]
    # The same samples as from the staged copies (same files, same order, same seed).
    staged_rp = sample(tmp_path, "rp", spec("redpajama", n_texts=50, path=f"{repo}/*.jsonl"), name="redpajama")[1]
    assert out["redpajama"]["text"] == staged_rp["text"]
    mirror_list = tmp_path / "staged/urls/v1_6-sample.txt"
    mirror_list.parent.mkdir(parents=True)
    mirror_list.write_text(listing.read_text())
    for p in shards:
        (mirror_list.parent / p.name).write_bytes(p.read_bytes())
    staged_dolma = sample(tmp_path, "dolma", spec("dolma", n_texts=40, path=str(mirror_list)), name="dolma")[1]
    assert out["dolma"]["text"] == staged_dolma["text"]
    assert "/api/datasets/allenai/dolma" in _FakeHub.seen  # went through the hub API, not a shortcut


def test_url_list_set_on_a_data_file_is_named(tmp_path):
    data = tmp_path / "a.jsonl"
    data.write_text(json.dumps({"text": "a"}) + "\n")
    with pytest.raises(CorpusError, match=f"URL list {data} holds JSON, not one URL per line"):
        list(iter_corpus({"format": "jsonl", "path": str(data), "url_list": True}, ReadStats()))
    gz = tmp_path / "a.json.gz"
    gz.write_bytes(gzip.compress(b'{"text": "a"}\n'))
    with pytest.raises(CorpusError, match=f"URL list {gz} is not UTF-8 text"):
        list(iter_corpus({"format": "jsonl", "path": str(gz), "url_list": True}, ReadStats()))


def test_staged_parquet_directory_ignores_the_download_cache(tmp_path):
    """`hf download --local-dir DIR` keeps bookkeeping under DIR/.cache; a directory path reads the data only."""
    import pyarrow as pa

    staged = tmp_path / "openwebtext"
    (staged / "plain_text/train").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a", "b"]}), staged / "plain_text/train/0000.parquet")
    cache = staged / ".cache/huggingface/download/plain_text/train"
    cache.mkdir(parents=True)
    (cache / "0000.parquet.metadata").write_text("sha\n")
    (cache / "0000.parquet.lock").write_text("")
    stats = ReadStats()
    assert list(iter_corpus({"format": "parquet", "path": str(staged)}, stats)) == ["a", "b"]
    assert [f["path"] for f in stats.files] == [str(staged / "plain_text/train/0000.parquet")]
