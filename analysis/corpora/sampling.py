"""Seeded, deterministic samples of source corpora and M2D2 domains, written as parquet + provenance.

Source corpora are sampled uniformly in one pass with reservoir sampling (Algorithm R), so a corpus
of any length (a hub stream included) is read once and only the sample is held in memory. Domains are
read twice, streaming: once to count their texts, once to keep the fixed-size subset drawn by index,
so memory follows the sample (at most 50,000 texts), not the domain (up to several GB).
The same config always gives the same sample; each item's seed derives from the config's one seed and
its name, so adding a domain or corpus leaves the others unchanged.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Iterable, Mapping, Sequence, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from analysis import __version__
from analysis.corpora import catalogue, m2d2
from analysis.corpora.sources import ReadStats, iter_corpus
from analysis.errors import CorpusError
from analysis.io import atomic_path, derive_seed, write_json

log = logging.getLogger(__name__)
T = TypeVar("T")


def reservoir_sample(items: Iterable[T], k: int, rng: random.Random) -> tuple[list[tuple[int, T]], int]:
    """A uniform sample of ``k`` items from a stream of unknown length (Algorithm R).

    Returns ``(sample, n_seen)``: the sample as (position in stream, item) pairs in stream order.
    """
    reservoir: list[tuple[int, T]] = []
    n_seen = 0
    for n_seen, item in enumerate(items, start=1):
        index = n_seen - 1
        if index < k:
            reservoir.append((index, item))
        else:
            slot = rng.randrange(n_seen)
            if slot < k:
                reservoir[slot] = (index, item)
    reservoir.sort(key=lambda pair: pair[0])
    return reservoir, n_seen


def domain_sample_size(n_available: int, fraction: float, max_texts: int, min_texts: int = 0) -> int:
    """The paper's rule: a ``fraction`` of the texts (5%), at most ``max_texts`` (50,000).

    ``min_texts`` raises the count for small domains (never above what exists):
    ``n = min(N, max_texts, max(ceil(fraction * N), min_texts))``.
    """
    if n_available <= 0:
        return 0
    wanted = max(math.ceil(fraction * n_available), min_texts)
    return min(n_available, max_texts, wanted)


def _write_parquet(path: str | Path, columns: Mapping[str, Sequence], metadata: Mapping[str, str]) -> None:
    table = pa.table(dict(columns))
    table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _take(streams: Sequence[m2d2.SplitStream], policy: str, chosen: Sequence[int]) -> list[tuple[str, int, str]]:
    """``(split, index in split, text)`` of the texts at the sorted global positions ``chosen``,
    reading each split again; a split whose bytes changed since the count is an error."""
    sample, wanted, position = [], iter(chosen), 0
    target = next(wanted, None)
    for stream in streams:
        first_pass = stream.sha256
        for index, text in enumerate(m2d2.iter_documents(stream, policy)):
            if position == target:
                sample.append((stream.split, index, text))
                target = next(wanted, None)
            position += 1
        if stream.sha256 != first_pass:
            raise CorpusError(f"{stream.source} changed while it was being sampled; run the job again")
    return sample


def sample_domain(
    *,
    root: str | Path,
    domain: str,
    splits: Sequence[str],
    document_policy: str,
    fraction: float,
    max_texts: int,
    min_texts: int,
    base_seed: int,
    max_invalid_fraction: float,
    output: str | Path,
    provenance: str | Path,
    portion_overrides: Mapping[str, str] | None = None,
) -> dict:
    """Sample texts of one M2D2 domain; write ``output`` (parquet) and ``provenance`` (JSON).

    Parquet columns: ``text`` (as released, not stripped), ``split``, ``source_index`` (position of the
    text in its split under ``document_policy``). Returns the provenance record.
    """
    location = m2d2.locate_domain(root, domain)
    # Pass 1 counts the texts of each split (and checks and hashes the files); pass 2 reads them
    # again and keeps only the drawn ones: memory follows the sample, not the domain.
    streams = [m2d2.SplitStream(root, domain, split, max_invalid_fraction) for split in splits]
    counts = [sum(1 for _ in m2d2.iter_documents(stream, document_policy)) for stream in streams]
    files, warnings = [], []
    for stream, n_texts in zip(streams, counts):
        files.append(
            {
                "split": stream.split,
                "path": stream.source,
                "sha256": stream.sha256,
                "lines": stream.n_lines,
                "blank_lines": stream.n_blank_lines,
                "invalid_utf8_lines": stream.n_invalid_lines,
                "replaced_bytes": stream.n_replaced_bytes,
                "texts": n_texts,
            }
        )
        warnings.extend(stream.warnings)
    n_pool = sum(counts)

    n = domain_sample_size(n_pool, fraction, max_texts, min_texts)
    seed = derive_seed(base_seed, "domain", domain)
    # The same draw as indexing the whole pool (splits in order, texts in order) would give.
    chosen = sorted(random.Random(seed).sample(range(n_pool), n))
    sample = _take(streams, document_policy, chosen)
    record = {
        "kind": "domain",
        "name": domain,
        "portion": catalogue.portion(domain, portion_overrides),
        "reader": {
            "format": "m2d2",
            "root": str(root),
            "location": location.kind,
            "splits": list(splits),
            "document_policy": document_policy,
        },
        "files": files,
        "n_available": n_pool,
        "n_sampled": n,
        "rule": {
            "formula": "min(N, max_texts, max(ceil(fraction * N), min_texts))",
            "fraction": fraction,
            "max_texts": max_texts,
            "min_texts": min_texts,
        },
        "base_seed": base_seed,
        "seed": seed,
        "warnings": warnings,
        "analysis_version": __version__,
    }
    _write_parquet(
        output,
        {
            "text": [t for _, _, t in sample],
            "split": [s for s, _, _ in sample],
            "source_index": pa.array([i for _, i, _ in sample], type=pa.int64()),
        },
        {"kind": "domain", "name": domain, "document_policy": document_policy},
    )
    write_json(provenance, record)
    log.info("domain %s: sampled %d of %d texts (%s)", domain, n, n_pool, location.kind)
    return record


def sample_source(
    *,
    name: str,
    spec: Mapping,
    base_seed: int,
    output: str | Path,
    provenance: str | Path,
    progress: bool = True,
) -> dict:
    """Sample ``spec['n_texts']`` texts of one source corpus uniformly; write parquet + provenance.

    Parquet columns: ``text`` and ``source_index`` (position among the corpus's non-empty texts, in
    file order). Asking for more texts than the corpus has is an error, not a silent shortfall.
    """
    k = int(spec["n_texts"])
    seed = derive_seed(base_seed, "source", name)
    stats = ReadStats()
    texts = iter_corpus(spec, stats)
    if progress:
        from tqdm import tqdm

        texts = tqdm(texts, desc=f"reading {name}", unit=" texts", mininterval=5)
    sample, n_seen = reservoir_sample(texts, k, random.Random(seed))
    if n_seen < k:
        raise CorpusError(
            f"corpus {name!r} ({spec['path']}) has {n_seen} non-empty texts but corpora.{name}.n_texts "
            f"asks for {k}; lower n_texts or point to more data"
        )
    if stats.n_invalid_lines:
        message = f"corpus {name!r}: {stats.n_invalid_lines} lines had invalid UTF-8 (replaced with U+FFFD)"
        log.warning(message)
        stats.warnings.append(message)
    record = {
        "kind": "source",
        "name": name,
        "reader": {
            "format": spec["format"],
            "path": spec["path"],
            "text_field": spec.get("text_field", "text"),
            **({"txt_unit": spec.get("txt_unit", "file")} if spec["format"] == "txt" else {}),
            **({"url_list": True} if spec.get("url_list") else {}),
        },
        **stats.as_dict(),
        "n_available": n_seen,
        "n_sampled": k,
        "rule": {"method": "reservoir (Algorithm R), uniform over non-empty texts", "n_texts": k},
        "base_seed": base_seed,
        "seed": seed,
        "analysis_version": __version__,
    }
    _write_parquet(
        output,
        {"text": [t for _, t in sample], "source_index": pa.array([i for i, _ in sample], type=pa.int64())},
        {"kind": "source", "name": name},
    )
    write_json(provenance, record)
    log.info("corpus %s: sampled %d of %d texts", name, k, n_seen)
    return record
