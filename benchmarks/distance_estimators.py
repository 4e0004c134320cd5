"""Plug-in and corrected MMD and FD on Gaussians with known distances, and the corrected stage's cost.

    .venv/bin/python benchmarks/distance_estimators.py drift     [--dim 384] [--corpus 100000] [--draws 4]
    .venv/bin/python benchmarks/distance_estimators.py coverage  [--sizes 3000,10000] [--draws 200]
    .venv/bin/python benchmarks/distance_estimators.py spread    [--sizes 1000,3000,10000] [--draws 25]
    .venv/bin/python benchmarks/distance_estimators.py cost      [--dims 384,768] [--baseline 16c12a1]
    .venv/bin/python benchmarks/distance_estimators.py --smoke   # every part at d = 16, a few draws; cost
                                                                 # against HEAD (make test)

The sets are Gaussians in d dimensions whose distances are known in closed form: the corpus
N(0, diag(a)), the domain N(mu, diag(b)), with a decaying spectrum a_i ~ i^-0.8 scaled to trace 1 (like
l2-normalised SBERT embeddings), b_i = a_i (1 + 0.6 sin(i / 7)) scaled to trace 1, mu = 0.04 on the
first 20 coordinates. MMD = ||mu||^2 = 0.032 and FD = ||mu||^2 + sum (sqrt a_i - sqrt b_i)^2 (at
d = 384: 0.0693). The estimators do not know the covariances are diagonal (FD is invariant under a
rotation of both sets, so this loses no generality). Every draw redraws both sets.

* drift: plug-in and corrected values at growing domain sizes (MMD from 100 texts, FD from 1,000),
  the mean over --draws draws, and whether each draw's interval holds the truth.
* coverage: the share of --draws draws whose 95% interval holds the truth, at each of --sizes, with
  the mean interval half-width and the estimators' empirical standard deviation beside the estimated.
* spread: the standard deviation of FD (mean term unbiased) over draws, against its estimate from
  random halves (what the pipeline uses) and from the bootstrap (what it used before), at --sizes.
* cost: one distance job on the paper's shapes (a 50,000-text domain against the saved statistics
  of a 930,000-text corpus, float32 embeddings on disk, one BLAS thread like a one-core job), run by
  the code at --baseline (issue 10's statistics rule, before these estimators) and by this tree,
  alternately, in fresh processes, on the same files.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.similarity import compare as compare_lib  # noqa: E402
from analysis.similarity import distances as dist  # noqa: E402

SEED = 20261129
Z95 = 1.959964


def defaults() -> tuple[dict, dist.Extrapolation]:
    """The similarity settings of the schema's defaults (what a pipeline run uses)."""
    from analysis import config as config_lib

    similarity = config_lib.schema_defaults("similarity")
    return similarity, dist.Extrapolation(**similarity["fd_extrapolation"])


class Gaussians:
    """The corpus and domain distributions, their true distances, and draws of their moments."""

    def __init__(self, dim: int):
        i = np.arange(1, dim + 1)
        self.dim = dim
        self.corpus_variance = 1.0 / i**0.8 / (1.0 / i**0.8).sum()
        domain = self.corpus_variance * (1 + 0.6 * np.sin(i / 7.0))
        self.domain_variance = domain / domain.sum()
        self.shift = np.zeros(dim)
        self.shift[:20] = 0.04
        self.mmd = float(self.shift @ self.shift)
        self.fd = self.mmd + float(((np.sqrt(self.corpus_variance) - np.sqrt(self.domain_variance)) ** 2).sum())

    def moments(self, n: int, side: str, rng: np.random.Generator, blocks: int, seed: int) -> dist.Moments:
        scale = np.sqrt(self.corpus_variance if side == "corpus" else self.domain_variance)
        shift = 0.0 if side == "corpus" else self.shift
        rows = rng.standard_normal((n, self.dim)) * scale + shift
        return dist.compute_moments(rows, blocks=blocks, seed=seed)


def one_draw(model: Gaussians, n_corpus: int, n_domain: int, draw: int, resamples: int,
             extrapolation: dist.Extrapolation, blocks: int) -> dict:
    rng = np.random.default_rng([SEED, n_domain, draw])
    corpus = model.moments(n_corpus, "corpus", rng, blocks, seed=2 * draw)
    domain = model.moments(n_domain, "domain", rng, blocks, seed=2 * draw + 1)
    return compare_lib.distance_record(
        corpus="corpus", domain="domain", portion="wiki", moments_c=corpus, moments_d=domain,
        embedding_model="gaussian", resamples=resamples, confidence=0.95, seed=draw, extrapolation=extrapolation,
    )


def holds(record: dict, key: str, truth: float) -> bool | None:
    interval = record[f"{key}_ci"]
    return None if interval is None else bool(interval[0] <= truth <= interval[1])


def drift(args) -> None:
    similarity, extrapolation = defaults()
    model = Gaussians(args.dim)
    print(f"d = {args.dim}, corpus {args.corpus} texts, {args.draws} draws per size, {similarity['resamples']} "
          f"random halves; true MMD {model.mmd:.5f}, true FD {model.fd:.5f}; corrected FD defined from "
          f"{extrapolation.minimum_texts(args.dim)} texts\n")
    print("| n domain | n/d | plug-in MMD | unbiased MMD | its 95% half-width | held | plug-in FD | corrected FD "
          "| its 95% half-width | held | seconds per draw |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        start = time.perf_counter()
        records = [one_draw(model, args.corpus, n, draw, similarity["resamples"], extrapolation,
                            similarity["blocks"]) for draw in range(args.draws)]
        seconds = (time.perf_counter() - start) / args.draws
        mean = {key: np.mean([r[key] for r in records]) if records[0][key] is not None else math.nan
                for key in ("mmd", "mmd_unbiased", "fd", "fd_corrected")}
        width = {key: np.mean([(r[f"{key}_ci"][1] - r[f"{key}_ci"][0]) / 2 for r in records])
                 if records[0][f"{key}_ci"] is not None else math.nan for key in ("mmd_unbiased", "fd_corrected")}
        held_mmd = sum(holds(r, "mmd_unbiased", model.mmd) for r in records)
        held_fd = [holds(r, "fd_corrected", model.fd) for r in records]
        fd_text = "undefined" if math.isnan(mean["fd_corrected"]) else f"{mean['fd_corrected']:.5f}"
        fd_held = "-" if held_fd[0] is None else f"{sum(held_fd)}/{len(records)}"
        fd_width = "-" if math.isnan(width["fd_corrected"]) else f"{width['fd_corrected']:.5f}"
        print(f"| {n:,} | {n / args.dim:.1f} | {mean['mmd']:.5f} | {mean['mmd_unbiased']:.5f} | "
              f"{width['mmd_unbiased']:.5f} | {held_mmd}/{len(records)} | {mean['fd']:.5f} | {fd_text} | {fd_width} | "
              f"{fd_held} | {seconds:.1f} |", flush=True)


def coverage(args) -> None:
    similarity, extrapolation = defaults()
    model = Gaussians(args.dim)
    resamples = args.resamples or similarity["resamples"]
    print(f"d = {args.dim}, corpus {args.corpus} texts, {args.draws} draws per size, {resamples} random halves; "
          f"95% intervals; true MMD {model.mmd:.5f}, FD {model.fd:.5f}\n")
    print("| n domain | estimator | coverage | mean estimate - truth | sd over draws | mean estimated sd "
          "| mean half-width |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        records = []
        start = time.perf_counter()
        for draw in range(args.draws):
            records.append(one_draw(model, args.corpus, n, draw, resamples, extrapolation, similarity["blocks"]))
            if (draw + 1) % 25 == 0:
                print(f"<!-- n {n}: {draw + 1} draws, {time.perf_counter() - start:.0f} s -->", flush=True)
        for key, truth in (("mmd", model.mmd), ("mmd_unbiased", model.mmd), ("fd", model.fd),
                           ("fd_corrected", model.fd)):
            values = np.array([r[key] for r in records], dtype=float)
            if np.isnan(values).any():
                print(f"| {n:,} | {key} | undefined | | | | |")
                continue
            held = np.mean([holds(r, key, truth) for r in records])
            estimated = np.mean([r["intervals"]["standard_deviation"][key] for r in records])
            half = np.mean([(r[f"{key}_ci"][1] - r[f"{key}_ci"][0]) / 2 for r in records])
            print(f"| {n:,} | {key} | {held:.3f} | {values.mean() - truth:+.5f} | {values.std(ddof=1):.5f} | "
                  f"{estimated:.5f} | {half:.5f} |", flush=True)


def spread(args) -> None:
    """The standard deviation of FD with its mean term unbiased, over draws, against the estimate from
    random halves and from bootstrap resamples (blocks drawn with replacement) of each draw."""
    similarity, _ = defaults()
    model = Gaussians(args.dim)
    resamples = args.resamples or 50

    def fd_unbiased(corpus, domain, weights_c, weights_d):
        mean_c, cov_c, n_c = corpus.weighted(weights_c)
        mean_d, cov_d, n_d = domain.weighted(weights_d)
        return dist.frechet_distance(mean_c, cov_c, mean_d, cov_d) - np.trace(cov_c) / n_c - np.trace(cov_d) / n_d

    def bootstrap_weights(moments, rng):
        m = len(moments.block_counts)
        return rng.multinomial(m, np.full(m, 1.0 / m)).astype(np.float64)

    print(f"d = {args.dim}, corpus {args.corpus} texts, {args.draws} draws, {resamples} halves and {resamples} "
          "bootstrap resamples per draw\n")
    print("| n domain | sd of FD over draws | estimated from halves | ratio | estimated by the bootstrap | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        values, halves, boots = [], [], []
        for draw in range(args.draws):
            rng = np.random.default_rng([SEED, n, draw, 1])
            corpus = model.moments(args.corpus, "corpus", rng, similarity["blocks"], seed=2 * draw)
            domain = model.moments(n, "domain", rng, similarity["blocks"], seed=2 * draw + 1)
            ones_c, ones_d = np.ones(len(corpus.block_counts)), np.ones(len(domain.block_counts))
            values.append(fd_unbiased(corpus, domain, ones_c, ones_d))
            halves.append(np.std([fd_unbiased(corpus, domain, corpus.half_weights(rng), domain.half_weights(rng))
                                  for _ in range(resamples)], ddof=1))
            boots.append(np.std([fd_unbiased(corpus, domain, bootstrap_weights(corpus, rng),
                                             bootstrap_weights(domain, rng)) for _ in range(resamples)], ddof=1))
        truth = np.std(values, ddof=1)
        print(f"| {n:,} | {truth:.5f} | {np.mean(halves):.5f} | {np.mean(halves) / truth:.2f} | "
              f"{np.mean(boots):.5f} | {np.mean(boots) / truth:.2f} |", flush=True)


CHILD = r"""
import inspect, json, sys, time
sys.path.insert(0, sys.argv[1])
from threadpoolctl import threadpool_limits
from analysis.similarity import compare as compare_lib
arguments = json.loads(sys.argv[2])
if "extrapolation" in inspect.signature(compare_lib.compare).parameters:
    from analysis import config as config_lib
    from analysis.similarity.distances import Extrapolation
    arguments["extrapolation"] = Extrapolation(**config_lib.schema_defaults("similarity")["fd_extrapolation"])
else:
    arguments["interval"] = "basic"
with threadpool_limits(1):
    start, cpu = time.perf_counter(), time.process_time()
    record = compare_lib.compare(**arguments)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"wall": wall, "cpu": cpu, "file": compare_lib.__file__,
                  "corrected": record.get("fd_corrected") is not None}))
"""


def cost(args) -> None:
    from analysis.similarity import statistics as stats
    from benchmarks.distance_stage import write_embeddings

    similarity, _ = defaults()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        baseline = tmp / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.baseline],
                       check=True, capture_output=True)
        try:
            print(f"one distance job, {args.domain_rows:,}-text domain against a {args.corpus_rows:,}-text corpus's "
                  f"saved statistics, {similarity['resamples']} resamples, one BLAS thread; baseline "
                  f"{args.baseline} vs this tree, {args.repeats} alternating runs each, fresh processes\n")
            print("| d | baseline s (CPU) | this tree s (CPU) | ratio | corrected FD defined |")
            print("|---:|---:|---:|---:|---|")
            for dim in args.dims:
                corpus, domain = tmp / f"corpus{dim}.npy", tmp / f"domain{dim}.npy"
                write_embeddings(corpus, args.corpus_rows, dim, 0, 0.0)
                write_embeddings(domain, args.domain_rows, dim, 1, 0.3)
                statistics = tmp / f"statistics{dim}.npz"
                stats.corpus_statistics(
                    corpus="corpus", embeddings=corpus, embedding_metadata=corpus.with_suffix(".json"),
                    output=statistics, metadata=statistics.with_suffix(".json"), blocks=similarity["blocks"],
                    chunk_rows=similarity["chunk_rows"], base_seed=SEED,
                )
                arguments = dict(
                    corpus="corpus", domain="domain", portion="s2orc", corpus_statistics=str(statistics),
                    corpus_statistics_metadata=str(statistics.with_suffix(".json")),
                    corpus_metadata=str(corpus.with_suffix(".json")), domain_embeddings=str(domain),
                    domain_metadata=str(domain.with_suffix(".json")), output=str(tmp / "distance.json"),
                    resamples=similarity["resamples"], blocks=similarity["blocks"], confidence=0.95,
                    chunk_rows=similarity["chunk_rows"], base_seed=SEED,
                )
                runs = {"baseline": [], "new": []}
                for _ in range(args.repeats):
                    for name, tree in (("baseline", baseline), ("new", ROOT)):
                        child = subprocess.run([sys.executable, "-c", CHILD, str(tree), json.dumps(arguments)],
                                               capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
                        if child.returncode:
                            raise SystemExit(child.stderr[-3000:])
                        result = json.loads(child.stdout.strip().splitlines()[-1])
                        assert result["file"].startswith(str(tree)), result["file"]
                        runs[name].append(result)
                old = min(r["cpu"] for r in runs["baseline"])
                new = min(r["cpu"] for r in runs["new"])
                print(f"| {dim} | {old:.1f} | {new:.1f} | {new / old:.2f}x | {runs['new'][0]['corrected']} |",
                      flush=True)
                for path in (corpus, domain, statistics):
                    path.unlink()
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)],
                           capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["drift", "coverage", "spread", "cost"], nargs="?")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--corpus", type=int, default=None, help="corpus texts (drift 100,000, else 50,000)")
    parser.add_argument("--sizes", default=None, help="domain sizes, comma-separated")
    parser.add_argument("--draws", type=int, default=None)
    parser.add_argument("--resamples", type=int, default=None, help="random halves (default: the schema's)")
    parser.add_argument("--dims", default="384,768")
    parser.add_argument("--corpus-rows", type=int, default=930_000)
    parser.add_argument("--domain-rows", type=int, default=50_000)
    parser.add_argument("--baseline", default="16c12a1", help="the code before these estimators")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tmp", default=None, help="directory for the cost part's files (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="every part on tiny sets (d = 16)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # not the notes on singular covariances or small domains
    if args.smoke:
        smoke = {"dim": 16, "corpus": 3000, "draws": 2, "resamples": 5, "dims": [16], "corpus_rows": 3000,
                 "domain_rows": 400, "baseline": "HEAD", "repeats": 1}
        for part, sizes in (("drift", [100, 400]), ("coverage", [400]), ("spread", [400]), ("cost", [0])):
            print(f"\n### {part}\n")
            PARTS[part](argparse.Namespace(**{**vars(args), **smoke, "part": part, "sizes": sizes}))
        return
    if args.part is None:
        parser.error("name a part (drift, coverage, spread, cost) or give --smoke")
    sizes = {"drift": "100,300,1000,3000,10000,50000", "coverage": "3000,10000", "spread": "1000,3000,10000"}
    args.sizes = [int(s) for s in (args.sizes or sizes.get(args.part, "0")).split(",")]
    args.draws = args.draws or {"drift": 4, "coverage": 200, "spread": 25}.get(args.part, 1)
    args.corpus = args.corpus or (100_000 if args.part == "drift" else 50_000)
    args.dims = [int(d) for d in args.dims.split(",")]
    PARTS[args.part](args)


PARTS = {"drift": drift, "coverage": coverage, "spread": spread, "cost": cost}


if __name__ == "__main__":
    main()
