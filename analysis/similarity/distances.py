"""Linear-kernel MMD and Fréchet distance between two sets of embeddings: plug-in, corrected, intervals.

* MMD with a linear kernel (Gretton et al. 2012): the plug-in ``||mean_C - mean_D||^2`` and the
  unbiased U-statistic ``mmd_unbiased`` (the plug-in minus tr(S_C) / n_C + tr(S_D) / n_D).
* Fréchet distance (Dowson and Landau 1982):
  ``||mu_C - mu_D||^2 + tr(S_C) + tr(S_D) - 2 tr((S_C S_D)^(1/2))``.
  The trace of the square root is computed without a general (non-symmetric) matrix square root:
  with ``S_C = L L^T`` (Cholesky; or ``L = S_C^(1/2)`` from an eigendecomposition when ``S_C`` is
  singular), the eigenvalues of ``S_C S_D`` are those of the symmetric positive semi-definite
  ``L^T S_D L``, so ``tr((S_C S_D)^(1/2)) = sum_i sqrt(eig_i(L^T S_D L))``: real by construction,
  exact up to rounding, and 8-9x faster than ``scipy.linalg.sqrtm`` at d = 384 and 768
  (benchmarks/frechet.py). The plug-in is biased upwards by terms of order d / n; the corrected FD
  has its mean term unbiased and the trace of the square root extrapolated to infinitely many texts
  (``extrapolate_trace_sqrt``).

Everything is float64. Moments are accumulated in chunks of rows read from a memory-mapped ``.npy``,
so a 930k x 768 corpus is never in memory at once. The same pass keeps per-block sufficient
statistics (row count, sum, sum of outer products) over a seeded random partition of the rows into
``blocks`` groups; a subsample is a set of blocks whose statistics are combined, at O(blocks x d^2)
instead of a pass over the data: the random halves that give every interval
(``half_sample_replicates``) and the nested subsamples of the extrapolation. With ``n <= blocks``
every row is its own block.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.errors import PipelineError

# scipy.stats is imported by the interval that uses it (normal_interval): importing this module
# for the estimators alone stays cheap.

log = logging.getLogger(__name__)


@dataclass
class Moments:
    """Sample mean and covariance (ddof=1) of n rows of dimension d, plus block statistics.

    Block statistics are centred on ``mean``: ``block_sums[b] = sum_{i in b} (x_i - mean)`` and
    ``block_outer[b] = sum_{i in b} (x_i - mean)(x_i - mean)^T``.
    """

    n: int
    mean: np.ndarray  # (d,)
    cov: np.ndarray  # (d, d)
    block_counts: np.ndarray  # (m,)
    block_sums: np.ndarray  # (m, d)
    block_outer: np.ndarray  # (m, d, d)
    # The upper triangles of block_outer, (m, d (d + 1) / 2), and where each (i, j) lies in them;
    # False once found unusable (see _outer_sum).
    _packed: np.ndarray | None | bool = field(default=None, init=False, repr=False, compare=False)
    _unpack: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def _outer_sum(self, weights: np.ndarray) -> np.ndarray:
        """``sum_b weights[b] block_outer[b]`` (d, d), as ``np.tensordot(weights, block_outer, 1)``.

        The matrix-vector product is memory-bound: it reads the m x d x d array (118 MB at m = 100,
        d = 384) for every resample. The block outer products are exactly symmetric (numpy computes
        ``X.T @ X`` with syrk and mirrors it), so the same product over their upper triangles reads
        half and is mirrored into the same matrix, bit for bit: BLAS does the same operations for
        each output element whatever their number. That is checked, not assumed: on the first call
        both are computed and compared, and any difference (another BLAS, or outer products that
        are not symmetric) keeps ``tensordot`` for good.
        """
        if self._packed is False:
            return np.tensordot(weights, self.block_outer, axes=1)
        if self._packed is None:
            m, d = len(self.block_counts), self.dim
            if not all(np.array_equal(block, block.T) for block in self.block_outer):
                self._packed = False
                return self._outer_sum(weights)
            upper = np.triu_indices(d)
            self._packed = np.ascontiguousarray(self.block_outer.reshape(m, d * d)[:, upper[0] * d + upper[1]])
            self._unpack = np.empty((d, d), dtype=np.intp)
            self._unpack[upper] = self._unpack.T[upper] = np.arange(len(upper[0]))
            packed = np.dot(weights.reshape(1, m), self._packed)[0][self._unpack]
            if not np.array_equal(packed, np.tensordot(weights, self.block_outer, axes=1)):
                log.info("upper-triangle block products differ from tensordot's here: not used")
                self._packed, self._unpack = False, None
                return self._outer_sum(weights)
            return packed
        # As tensordot calls it: a (1, m) row times the (m, k) matrix.
        return np.dot(weights.reshape(1, len(weights)), self._packed)[0][self._unpack]

    def weighted(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Mean, covariance (ddof 1) and size of the rows of the blocks, each counted ``weights[b]``
        times (0/1 weights: a subsample)."""
        n = float(weights @ self.block_counts)
        shift = (weights @ self.block_sums) / n
        cov = self._outer_sum(weights)
        # In place, element by element as (outer - n * shift shift^T) / (n - 1).
        cov -= n * np.outer(shift, shift)
        cov /= n - 1
        return self.mean + shift, cov, n

    def half_weights(self, rng: np.random.Generator) -> np.ndarray:
        """0/1 weights of a random half of the blocks (``m // 2`` of them), drawn without replacement."""
        m = len(self.block_counts)
        weights = np.zeros(m)
        weights[rng.permutation(m)[: m // 2]] = 1.0
        return weights


def compute_moments(
    data: np.ndarray, *, blocks: int = 100, chunk_rows: int = 16384, seed: int = 0, source: str = "embeddings"
) -> Moments:
    """Moments of the rows of ``data`` (n, d), any float dtype, possibly memory-mapped."""
    n, d = data.shape
    if n < 2:
        raise PipelineError(f"{source}: {n} row(s); at least 2 are needed for a covariance")
    m = min(blocks, n)
    rng = np.random.default_rng(seed)
    block_of_row = rng.permutation(n) % m  # balanced random partition

    total = np.zeros(d)
    for start in range(0, n, chunk_rows):
        chunk = np.asarray(data[start : start + chunk_rows], dtype=np.float64)
        if not np.isfinite(chunk).all():
            bad = start + int(np.argwhere(~np.isfinite(chunk))[0][0])
            raise PipelineError(f"{source}: row {bad} holds a NaN or infinite value")
        total += chunk.sum(axis=0)
    mean = total / n

    counts = np.bincount(block_of_row, minlength=m).astype(np.float64)
    sums = np.zeros((m, d))
    outer = np.zeros((m, d, d))
    for start in range(0, n, chunk_rows):
        chunk = np.asarray(data[start : start + chunk_rows], dtype=np.float64) - mean
        ids = block_of_row[start : start + chunk_rows]
        order = np.argsort(ids, kind="stable")
        chunk, ids = chunk[order], ids[order]
        bounds = np.flatnonzero(np.diff(ids)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(ids)]):
            rows = chunk[lo:hi]
            b = ids[lo]
            sums[b] += rows.sum(axis=0)
            outer[b] += rows.T @ rows
    # Centred on the exact mean, the total of the block sums is zero up to rounding.
    cov = outer.sum(axis=0) / (n - 1)
    return Moments(n=n, mean=mean, cov=cov, block_counts=counts, block_sums=sums, block_outer=outer)


def mmd_linear(mean_c: np.ndarray, mean_d: np.ndarray) -> float:
    """Biased linear-kernel MMD^2: ``||mu_C - mu_D||^2``."""
    diff = np.asarray(mean_c, dtype=np.float64) - np.asarray(mean_d, dtype=np.float64)
    return float(diff @ diff)


def _psd_sqrt(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric square root of a PSD matrix and its eigenvalues (negative rounding clipped to 0)."""
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    values = np.clip(values, 0.0, None)
    return (vectors * np.sqrt(values)) @ vectors.T, values


def _middle(cov_a: np.ndarray, cov_b: np.ndarray) -> np.ndarray | None:
    """``L^T S_b L`` for the Cholesky factor ``S_a = L L^T``; None when ``S_a`` is not positive definite."""
    try:
        factor = np.linalg.cholesky(cov_a)
    except np.linalg.LinAlgError:
        return None
    return factor.T @ cov_b @ factor


def trace_sqrt_product(cov_c: np.ndarray, cov_d: np.ndarray) -> float:
    """``tr((S_C S_D)^(1/2))`` for PSD ``S_C``, ``S_D`` from the eigenvalues of a symmetric PSD matrix.

    ``S_C S_D`` is similar to ``L^T S_D L`` (``S_C = L L^T``, Cholesky) and to ``S_C^½ S_D S_C^½``;
    both are symmetric PSD, so their eigenvalues are real and non-negative up to rounding. Cholesky
    is tried first on ``S_C``, then on ``S_D`` (the roles are symmetric), and only when both are
    singular is the eigendecomposition-based ``S_C^½`` used (several times slower).
    """
    middle = _middle(cov_c, cov_d)
    if middle is None:
        middle = _middle(cov_d, cov_c)
    if middle is None:
        root_c, _ = _psd_sqrt(cov_c)
        middle = root_c @ cov_d @ root_c
    values = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mean_c, cov_c, mean_d, cov_d) -> float:
    """Fréchet distance between Gaussians fitted to two sets; real and finite for PSD inputs."""
    value = (
        mmd_linear(mean_c, mean_d)
        + float(np.trace(cov_c))
        + float(np.trace(cov_d))
        - 2.0 * trace_sqrt_product(cov_c, cov_d)
    )
    if not np.isfinite(value):
        raise PipelineError("Fréchet distance is not finite: the covariances hold NaN or infinite values")
    return value


def numerical_rank(cov: np.ndarray) -> int:
    values = np.linalg.eigvalsh((cov + cov.T) / 2)
    top = max(float(values.max()), 0.0)
    return int((values > top * cov.shape[0] * np.finfo(np.float64).eps).sum())


def covariance_note(name: str, moments: Moments) -> dict:
    """Whether a covariance is singular (n <= d), and what the distance does about it."""
    rank = numerical_rank(moments.cov)
    note = {"n": moments.n, "dimension": moments.dim, "rank": rank, "singular": rank < moments.dim}
    if moments.n <= moments.dim:
        note["note"] = (
            f"{name}: n = {moments.n} <= d = {moments.dim}, so the sample covariance is singular "
            f"(rank {rank} <= n - 1). It is used as estimated, without regularisation: its zero "
            "eigenvalues enter the trace term as zeros (the square root is taken on the PSD part). "
            "FD from so few texts is biased; raise sampling.domain_min_texts for a full-rank estimate."
        )
    elif rank < moments.dim:
        note["note"] = (
            f"{name}: the covariance has numerical rank {rank} < d = {moments.dim} although n > d "
            "(embeddings confined to a subspace); used as estimated, without regularisation."
        )
    return note


def normal_interval(estimate: float, spread: float, confidence: float) -> list[float]:
    """``estimate -/+ z spread``, z the normal quantile of ``confidence``: it contains the estimate."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2.0))
    return [float(estimate - z * spread), float(estimate + z * spread)]


@dataclass(frozen=True)
class Extrapolation:
    """How the Fréchet distance is extrapolated to infinitely many texts (``extrapolate_trace_sqrt``).

    Both sets are subsampled to the same fractions f, nested (each subsample inside the next larger
    one), at ``points`` fractions evenly spaced in 1/f from 1 (the full sets) down to the smallest
    fraction: ``smallest_fraction``, or larger where a set is small, so that every subsample holds at
    least ``texts_per_dimension`` x d texts. A pair whose smallest fraction would exceed
    ``largest_smallest_fraction`` (sizes spanning less than a factor 1 / 0.8 = 1.25) is not
    extrapolated: the fit would rest on too short a lever. ``orderings`` random nestings are averaged.
    The settings come from the config (``similarity.fd_extrapolation``, defaults in the schema).
    """

    points: int
    smallest_fraction: float
    texts_per_dimension: float
    orderings: int
    largest_smallest_fraction: float = 0.8

    def minimum_texts(self, dim: int) -> int:
        """The fewest texts a set may hold for its distance to be extrapolated, at dimension ``dim``."""
        return math.ceil(self.texts_per_dimension * dim / self.largest_smallest_fraction)

    def fractions(self, n_corpus: int, n_domain: int, dim: int) -> tuple[np.ndarray | None, str | None]:
        """The subsample fractions (first 1.0, decreasing), or None and the reason there are none."""
        smallest = max(self.smallest_fraction, self.texts_per_dimension * dim / min(n_corpus, n_domain))
        if smallest > self.largest_smallest_fraction:
            side, n = ("domain", n_domain) if n_domain <= n_corpus else ("corpus", n_corpus)
            return None, (
                f"the {side} holds {n} texts, n/d = {n / dim:.2f}; extrapolating FD needs subsamples of at least "
                f"{self.texts_per_dimension:g} d = {math.ceil(self.texts_per_dimension * dim)} texts spanning a "
                f"factor {1 / self.largest_smallest_fraction:g} in size, so at least {self.minimum_texts(dim)} "
                "texts on each side"
            )
        return 1.0 / np.linspace(1.0, 1.0 / smallest, self.points), None


def _prefix_weights(moments: Moments, order: np.ndarray, fraction: float) -> np.ndarray:
    """0/1 weights of the first blocks of ``order`` holding about ``fraction`` of the rows."""
    m = len(moments.block_counts)
    take = min(m, max(2, round(fraction * m)))
    weights = np.zeros(m)
    weights[order[:take]] = 1.0
    return weights


def extrapolate_trace_sqrt(
    corpus: Moments, domain: Moments, fractions: np.ndarray, orderings: int, rng: np.random.Generator
) -> dict:
    """``tr((S_C S_D)^(1/2))`` extrapolated to infinitely many texts on both sides.

    The plug-in Fréchet distance is biased upwards by terms of order 1/n_C and 1/n_D (Chong and
    Forsyth, "Effectively Unbiased FID and Inception Score and where to find them", CVPR 2020:
    FID_N is linear in 1/N for N well above the dimension). Of its terms, ``||mu_C - mu_D||^2`` has
    an exact unbiased estimator (``mmd_unbiased``) and the traces of the ddof-1 covariances are
    unbiased, so only the trace of the square root is extrapolated: on nested subsamples of both
    sets at the fractions f, E[T_f] = T + b / f to first order (the bias a / (f n_C) + c / (f n_D)),
    so a line fitted to (1/f, T_f) has the unbiased T as its intercept. Subsamples are unions of the
    moments' blocks (their statistics are summed, no pass over rows), nested in a random
    order of the blocks; ``orderings`` orders are averaged, and their spread is the part of the
    estimate's sampling error that comes from the choice of subsamples.

    Returns the intercept (mean over orderings), each ordering's intercept, the mean 1/f realised on
    the domain side and the mean T at each fraction.
    """
    full = trace_sqrt_product(corpus.cov, domain.cov)
    inverse = np.empty((orderings, len(fractions)))
    values = np.empty((orderings, len(fractions)))
    intercepts = np.empty(orderings)
    for o in range(orderings):
        order_c = rng.permutation(len(corpus.block_counts))
        order_d = rng.permutation(len(domain.block_counts))
        inverse[o, 0], values[o, 0] = 1.0, full
        for j, fraction in enumerate(fractions[1:], start=1):
            _, cov_c, _ = corpus.weighted(_prefix_weights(corpus, order_c, fraction))
            _, cov_d, n_d = domain.weighted(_prefix_weights(domain, order_d, fraction))
            inverse[o, j], values[o, j] = domain.n / n_d, trace_sqrt_product(cov_c, cov_d)
        slope, intercept = np.polyfit(inverse[o], values[o], 1)
        intercepts[o] = intercept
    return {
        "estimate": float(intercepts.mean()),
        "per_ordering": intercepts,
        "inverse_fraction": inverse.mean(axis=0),
        "trace_sqrt": values.mean(axis=0),
    }


def mmd_unbiased(mean_c, trace_c: float, n_c: float, mean_d, trace_d: float, n_d: float) -> float:
    """Unbiased linear-kernel MMD^2: ``||mean_C - mean_D||^2 - tr(S_C) / n_C - tr(S_D) / n_D``.

    With S the ddof-1 sample covariance this equals the U-statistic of the linear kernel (Gretton et
    al. 2012, eq. 3: the mean over pairs of distinct texts within each set, over all pairs across),
    whose expectation is ``||mu_C - mu_D||^2`` at any n >= 2: E||mean_C - mean_D||^2 exceeds it by
    tr(Sigma_C) / n_C + tr(Sigma_D) / n_D. It is negative when the sets are closer than their
    sampling noise.
    """
    return mmd_linear(mean_c, mean_d) - trace_c / n_c - trace_d / n_d


#: The fewest blocks a set may have for half-sample intervals (each half then holds at least two rows).
MIN_BLOCKS_FOR_INTERVALS = 4


def half_sample_replicates(corpus: Moments, domain: Moments, *, resamples: int, seed: int) -> dict[str, np.ndarray]:
    """The plug-in MMD and FD, the unbiased MMD, and FD with its mean term unbiased, each computed on
    ``resamples`` random halves of both sets (half of each set's blocks, drawn without replacement).

    The spread of a statistic over random halves estimates its sampling variance at the full size:
    this is the delete-d jackknife with d = n / 2 (Shao and Wu, "A general theory for jackknife
    variance estimation", Ann. Statist. 17, 1989), whose variance estimate ``r / (d N) sum (theta_s -
    mean)^2`` has r / d = 1 for halves; for a mean it is exactly sigma^2 / n. It is used instead of
    the bootstrap because a bootstrap resample repeats texts, which distorts the spectrum of a
    covariance estimated from n ~ 3-30 d texts: on Gaussians in d = 384 the bootstrap standard
    deviation of FD was 2.4x (n = 3,000) and 4.7x (n = 1,000) the true one, the half-sample one
    1.0x and 1.25x (benchmarks/distance_estimators.py). With an odd number of blocks the halves
    hold ``m // 2`` blocks, which overstates the variance slightly (by at most m / (m - 1)).
    """
    if min(len(corpus.block_counts), len(domain.block_counts)) < MIN_BLOCKS_FOR_INTERVALS:
        raise PipelineError(
            f"half-sample intervals need at least {MIN_BLOCKS_FOR_INTERVALS} texts on each side; the sets hold "
            f"{corpus.n} and {domain.n}"
        )
    rng = np.random.default_rng(seed)
    replicates = {key: np.empty(resamples) for key in ("mmd", "fd", "mmd_unbiased", "fd_unbiased_mean")}
    for r in range(resamples):
        mean_c, cov_c, n_c = corpus.weighted(corpus.half_weights(rng))
        mean_d, cov_d, n_d = domain.weighted(domain.half_weights(rng))
        mmd = mmd_linear(mean_c, mean_d)
        unbiased = mmd_unbiased(mean_c, float(np.trace(cov_c)), n_c, mean_d, float(np.trace(cov_d)), n_d)
        fd = frechet_distance(mean_c, cov_c, mean_d, cov_d)
        replicates["mmd"][r], replicates["fd"][r] = mmd, fd
        # FD's mean term unbiased the same way: FD minus the plug-in MMD's excess.
        replicates["mmd_unbiased"][r], replicates["fd_unbiased_mean"][r] = unbiased, fd - (mmd - unbiased)
    return replicates


def load_embeddings(path: str | Path) -> np.ndarray:
    """A memory-mapped (n, d) float array from ``.npy``; a clear error for anything else."""
    try:
        data = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot read embeddings {path}: {exc}") from None
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.floating):
        raise PipelineError(f"{path}: expected a 2-D float array, found shape {data.shape} dtype {data.dtype}")
    return data
