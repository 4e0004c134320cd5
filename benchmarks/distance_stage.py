"""The distance stage at the paper's scale: corpus statistics once versus a corpus pass per pair.

    .venv/bin/python benchmarks/distance_stage.py [--rows 930000] [--dim 384] [--domains 5]
                                                   [--threads 1] [--resamples 200] [--check-old]
    .venv/bin/python benchmarks/distance_stage.py --smoke     # tiny corpus and domains (make test)

A synthetic corpus of --rows x --dim float32 embeddings (l2-normalised rows with a decaying
spectrum, like SBERT's) is written in chunks into a memory-mapped .npy in a temporary directory
(never whole in memory), and --domains synthetic domains with sizes spread geometrically from 300
to 50,000 rows (the paper's domain samples: 5% of a domain, at most 50,000 texts).

Measured, with BLAS limited to --threads (a one-core job; CPU seconds are process time):

* the statistics job, once: ``statistics.corpus_statistics`` in a subprocess, with its peak memory
  (VmHWM: it includes the pages of the memory-mapped corpus the job has touched, which are page
  cache, so RssAnon at the end is reported too); inside it, the corpus pass (``compute_moments``);
* per domain, the ``distance`` job as it now runs (``compare.compare``: loading the saved
  statistics, the domain pass, the intervals' random halves) and its parts, and the halves as they would run
  (``np.tensordot`` over the full block products instead of their upper triangles; checked equal).

The 199-domain totals are extrapolated linearly from the --domains measured (199 x the mean per
domain): today's stage pays the corpus pass in every job, the new one once. With --check-old one
pair is also run the old way (both moments from the embeddings, in the job) to check that model.

Not adopted, measured for comparison (last table row): the intervals with the halves' block
products batched into one matrix product per 83 halves (``batched_halves`` below), which reads
the 118 MB of block outer products once per batch instead of once per resample and side. It changes
the summation order of the resampled covariances; with a singular covariance (n <= d, like the
demo's 300-text domains) the square roots of eigenvalues that are zero up to rounding then move FD
by ~1e-9 relative, so the numbers would no longer equal today's to 1e-12.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics as stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import config as config_lib  # noqa: E402
from analysis.io import derive_seed  # noqa: E402
from analysis.similarity import compare as compare_lib  # noqa: E402
from analysis.similarity import distances as dist  # noqa: E402
from analysis.similarity import statistics as stats  # noqa: E402

PAPER_DOMAINS = 199
SEED = 20241121
EXTRAPOLATION = dist.Extrapolation(**config_lib.schema_defaults("similarity")["fd_extrapolation"])


def write_embeddings(path: Path, rows: int, dim: int, seed: int, shift: float, chunk: int = 65536) -> None:
    """Embedding-like rows into a memory-mapped .npy, ``chunk`` rows at a time."""
    rng = np.random.default_rng(seed)
    scale = np.sqrt(1.0 / np.arange(1, dim + 1) ** 0.8).astype(np.float32)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, chunk):
        x = rng.standard_normal((min(chunk, rows - start), dim), dtype=np.float32) * scale
        x[:, 0] += shift
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        array[start : start + len(x)] = x
    array.flush()
    del array
    Path(path).with_suffix(".json").write_text(
        json.dumps({"model": "synthetic", "count": rows, "dimension": dim, "input": {"sha256": f"{seed:064d}"}})
    )


def memory_status() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return fields


def child_statistics(args) -> None:
    """The corpus_statistics job, in its own process (for its peak memory): prints a JSON line. The
    corpus pass inside it (compute_moments) is timed through a wrapper."""
    measured = {}
    compute_moments = dist.compute_moments

    def timed_pass(*a, **k):
        start, cpu = time.perf_counter(), time.process_time()
        moments = compute_moments(*a, **k)
        measured.update(pass_wall=time.perf_counter() - start, pass_cpu=time.process_time() - cpu,
                        **memory_status())  # the moments still alive: about the peak of anonymous memory
        return moments

    dist.compute_moments = timed_pass
    with threadpool_limits(args.threads):
        start, cpu = time.perf_counter(), time.process_time()
        stats.corpus_statistics(
            corpus="corpus", embeddings=args.corpus, embedding_metadata=Path(args.corpus).with_suffix(".json"),
            output=args.statistics, metadata=Path(args.statistics).with_suffix(".json"), blocks=args.blocks,
            chunk_rows=args.chunk_rows, base_seed=SEED,
        )
        measured.update(job_wall=time.perf_counter() - start, job_cpu=time.process_time() - cpu)
    measured["VmHWM"] = memory_status()["VmHWM"]
    print(json.dumps(measured))


def batched_halves(corpus, domain, resamples: int, seed: int, batch_bytes: int = 64 << 20) -> np.ndarray:
    """FD replicates with the same draws as ``distances.half_sample_replicates``, block products batched
    (GEMM)."""
    rng = np.random.default_rng(seed)
    weights = {"c": [], "d": []}
    for _ in range(resamples):
        for key, moments in (("c", corpus), ("d", domain)):
            weights[key].append(moments.half_weights(rng))
    dim = corpus.dim
    batch = max(1, batch_bytes // (8 * dim * dim))
    fd = np.empty(resamples)

    def resample_many(moments, w):
        n = w @ moments.block_counts
        shift = (w @ moments.block_sums) / n[:, None]
        outer = (w @ moments.block_outer.reshape(len(moments.block_counts), dim * dim)).reshape(-1, dim, dim)
        outer -= n[:, None, None] * (shift[:, :, None] * shift[:, None, :])
        outer /= (n - 1)[:, None, None]
        return moments.mean + shift, outer

    for start in range(0, resamples, batch):
        stop = min(start + batch, resamples)
        means_c, covs_c = resample_many(corpus, np.array(weights["c"][start:stop]))
        means_d, covs_d = resample_many(domain, np.array(weights["d"][start:stop]))
        for i in range(stop - start):
            fd[start + i] = dist.frechet_distance(means_c[i], covs_c[i], means_d[i], covs_d[i])
    return fd


def timed(fn, *args, **kwargs):
    start, cpu = time.perf_counter(), time.process_time()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=930_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--domains", type=int, default=5)
    parser.add_argument("--min-domain", type=int, default=300)
    parser.add_argument("--max-domain", type=int, default=50_000)
    parser.add_argument("--blocks", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--chunk-rows", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check-old", action="store_true", help="also run one pair the old way")
    parser.add_argument("--tmp", default=None, help="directory for the synthetic files (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true",
                        help="5,000 x 32 corpus, two domains of 300 and 600 rows, 20 resamples, --check-old")
    parser.add_argument("--child-statistics", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--statistics", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # not the jobs' notes on singular domain covariances
    if args.smoke:
        args.rows, args.dim, args.domains, args.min_domain, args.max_domain = 5000, 32, 2, 300, 600
        args.blocks, args.resamples, args.chunk_rows, args.check_old = 20, 20, 1024, True
    if args.child_statistics:
        child_statistics(args)
        return

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.npy"
        _, generate_s, _ = timed(write_embeddings, corpus, args.rows, args.dim, 0, 0.0)
        sizes = np.unique(np.geomspace(args.min_domain, args.max_domain, args.domains).round().astype(int))
        domains = []
        for i, size in enumerate(sizes):
            path = tmp / f"domain{i}.npy"
            write_embeddings(path, int(size), args.dim, 1 + i, 0.3)
            domains.append(path)
        print(f"synthetic corpus {args.rows} x {args.dim} float32 ({corpus.stat().st_size / 2**30:.2f} GiB, "
              f"written in {generate_s:.0f} s); domains of {', '.join(map(str, sizes))} rows; "
              f"{args.blocks} blocks, {args.resamples} resamples, BLAS threads {args.threads}", flush=True)

        statistics = tmp / "statistics.npz"
        child = subprocess.run(
            [sys.executable, __file__, "--child-statistics", "--corpus", str(corpus), "--statistics",
             str(statistics), "--blocks", str(args.blocks), "--chunk-rows", str(args.chunk_rows),
             "--threads", str(args.threads)],
            capture_output=True, text=True, check=True,
        )
        job = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"statistics job: corpus pass {job['pass_cpu']:.1f} CPU s ({job['pass_wall']:.1f} s wall), "
              f"whole job {job['job_cpu']:.1f} CPU s; peak RSS {job['VmHWM']:.0f} MiB "
              f"(after the pass: RssAnon {job['RssAnon']:.0f} MiB, RssFile {job['RssFile']:.0f} MiB)", flush=True)

        rows = []
        with threadpool_limits(args.threads):
            for i, path in enumerate(domains):
                common = dict(corpus="corpus", domain=f"domain{i}", portion="s2orc",
                              corpus_metadata=corpus.with_suffix(".json"), domain_metadata=path.with_suffix(".json"),
                              resamples=args.resamples, blocks=args.blocks, confidence=0.95,
                              chunk_rows=args.chunk_rows, base_seed=SEED, extrapolation=EXTRAPOLATION)
                record, job_wall, job_cpu = timed(
                    compare_lib.compare, corpus_statistics=statistics,
                    corpus_statistics_metadata=statistics.with_suffix(".json"), domain_embeddings=path,
                    output=tmp / f"distance{i}.json", **common,
                )
                # The parts of that job, again.
                moments_c, load_wall, load_cpu = timed(stats.load_moments, statistics)
                moments_d, pass_wall, pass_cpu = timed(
                    dist.compute_moments, dist.load_embeddings(path), blocks=args.blocks, chunk_rows=args.chunk_rows,
                    seed=derive_seed(SEED, "blocks", "domains", f"domain{i}"),
                )
                _, boot_wall, boot_cpu = timed(dist.half_sample_replicates, moments_c, moments_d,
                                               resamples=args.resamples, seed=1)
                # Today's arithmetic and speed: tensordot over the full block products.
                plain_c = stats.load_moments(statistics)
                plain_d = dist.compute_moments(dist.load_embeddings(path), blocks=args.blocks,
                                               chunk_rows=args.chunk_rows,
                                               seed=derive_seed(SEED, "blocks", "domains", f"domain{i}"))
                plain_c._packed = plain_d._packed = False
                plain, old_boot_wall, old_boot_cpu = timed(dist.half_sample_replicates, plain_c, plain_d,
                                                           resamples=args.resamples, seed=1)
                packed = dist.half_sample_replicates(moments_c, moments_d, resamples=args.resamples, seed=1)
                assert all(np.array_equal(plain[key], packed[key]) for key in plain)
                _, batched_wall, batched_cpu = timed(batched_halves, moments_c, moments_d, args.resamples, 1)
                rows.append({"rows": moments_d.n, "job": job_cpu, "job_wall": job_wall, "load": load_cpu,
                             "domain_pass": pass_cpu, "intervals": boot_cpu, "batched": batched_cpu,
                             "old_intervals": old_boot_cpu,
                             "record": record})
                print(f"domain {i}: {moments_d.n} rows: job {job_cpu:.2f} CPU s ({job_wall:.2f} s wall): "
                      f"load {load_cpu:.2f}, domain pass {pass_cpu:.2f}, intervals {boot_cpu:.2f} "
                      f"(today's tensordot: {old_boot_cpu:.2f}, same numbers; batched, not adopted: "
                      f"{batched_cpu:.2f})", flush=True)
            if args.check_old:
                old_path = domains[0]
                start_cpu = time.process_time()
                data_c = dist.load_embeddings(corpus)
                moments_old = dist.compute_moments(data_c, blocks=args.blocks, chunk_rows=args.chunk_rows,
                                                   seed=stats.corpus_block_seed(SEED, "corpus"))
                domain_old = dist.compute_moments(dist.load_embeddings(old_path), blocks=args.blocks,
                                                  chunk_rows=args.chunk_rows,
                                                  seed=derive_seed(SEED, "blocks", "domains", "domain0"))
                old = compare_lib.distance_record(
                    corpus="corpus", domain="domain0", portion="s2orc", moments_c=moments_old, moments_d=domain_old,
                    embedding_model="synthetic", resamples=args.resamples, confidence=0.95,
                    seed=derive_seed(SEED, "distance", "corpus", "domain0"), extrapolation=EXTRAPOLATION,
                )
                old_cpu = time.process_time() - start_cpu
                same = all(old[k] == rows[0]["record"][k] for k in ("mmd", "fd", "mmd_ci", "fd_ci", "fd_terms"))
                print(f"old way, domain 0: {old_cpu:.1f} CPU s (model: corpus pass + job - load = "
                      f"{job['pass_cpu'] + rows[0]['job'] - rows[0]['load']:.1f}); identical numbers: {same}")

    keys = ("job", "load", "domain_pass", "intervals", "old_intervals", "batched")
    mean = {key: stat.fmean(r[key] for r in rows) for key in keys}
    # The job before the statistics stage: the corpus pass, the rest of the new job but the loading, the
    # intervals with tensordot.
    old_pair = job["pass_cpu"] + mean["job"] - mean["load"] - mean["intervals"] + mean["old_intervals"]
    statistics_only = PAPER_DOMAINS * (old_pair - job["pass_cpu"] + mean["load"]) + job["job_cpu"]
    old_total = PAPER_DOMAINS * old_pair
    new_total = job["job_cpu"] + PAPER_DOMAINS * mean["job"]
    print()
    print(f"Distance stage for one {args.rows} x {args.dim} corpus and {PAPER_DOMAINS} domains, CPU seconds with "
          f"{args.threads} BLAS thread(s); per-domain figures are the mean over the {len(rows)} domains measured "
          f"({', '.join(str(r['rows']) for r in rows)} rows), extrapolated linearly to {PAPER_DOMAINS}.")
    print()
    print("| part | old: corpus pass in every job | new: statistics once |")
    print("|---|---|---|")
    print(f"| corpus statistics job (once) | - | {job['job_cpu']:.1f} |")
    print(f"| corpus pass, per pair | {job['pass_cpu']:.1f} | - |")
    print(f"| loading the saved statistics, per pair | - | {mean['load']:.2f} |")
    print(f"| domain pass, per pair | {mean['domain_pass']:.2f} | {mean['domain_pass']:.2f} |")
    print(f"| intervals ({args.resamples} random halves), per pair | {mean['old_intervals']:.2f} (tensordot) | "
          f"{mean['intervals']:.2f} (upper triangles, same numbers) |")
    print(f"| distance job, per pair | {old_pair:.1f} | {mean['job']:.2f} |")
    print(f"| **stage total, {PAPER_DOMAINS} domains** | **{old_total / 60:.0f} min** | **{new_total / 60:.0f} min** |")
    print(f"| ratio | | **{old_total / new_total:.1f}x** ({old_total / statistics_only:.1f}x from the statistics "
          f"alone) |")
    batched_total = new_total + PAPER_DOMAINS * (mean["batched"] - mean["intervals"])
    print(f"| not adopted: halves batched ({mean['batched']:.2f} per pair; numbers differ ~1e-9 when n <= d) "
          f"| | {batched_total / 60:.0f} min, {old_total / batched_total:.1f}x |")
    print()
    print(f"Peak memory of the statistics job: {job['VmHWM']:.0f} MiB VmHWM, of which {job['RssFile']:.0f} MiB "
          f"mapped corpus pages (page cache); {job['RssAnon']:.0f} MiB anonymous.")


if __name__ == "__main__":
    main()
