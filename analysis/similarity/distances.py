"""Linear-kernel MMD and Fréchet distance between two sets of embeddings, with bootstrap intervals.

* MMD with a linear kernel (Gretton et al. 2012), biased estimator: ``||mu_C - mu_D||^2``.
* Fréchet distance (Dowson and Landau 1982):
  ``||mu_C - mu_D||^2 + tr(S_C) + tr(S_D) - 2 tr((S_C S_D)^(1/2))``.
  The trace of the square root is computed without a general (non-symmetric) matrix square root:
  with ``S_C = L L^T`` (Cholesky; or ``L = S_C^(1/2)`` from an eigendecomposition when ``S_C`` is
  singular), the eigenvalues of ``S_C S_D`` are those of the symmetric positive semi-definite
  ``L^T S_D L``, so ``tr((S_C S_D)^(1/2)) = sum_i sqrt(eig_i(L^T S_D L))``: real by construction,
  exact up to rounding, and 8-9x faster than ``scipy.linalg.sqrtm`` at d = 384 and 768
  (benchmarks/frechet.py).

Everything is float64. Moments are accumulated in chunks of rows read from a memory-mapped ``.npy``,
so a 930k x 768 corpus is never in memory at once. The same pass keeps per-block sufficient
statistics (row count, sum, sum of outer products) over a seeded random partition of the rows into
``blocks`` groups; a bootstrap resample draws blocks with replacement and combines their statistics,
which costs O(blocks x d^2) instead of a pass over the data. With ``n <= blocks`` every row is its own
block and this is the ordinary row bootstrap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.errors import PipelineError

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

    def resample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of one bootstrap resample (blocks drawn with replacement)."""
        m = len(self.block_counts)
        weights = rng.multinomial(m, np.full(m, 1.0 / m)).astype(np.float64)
        n = float(weights @ self.block_counts)
        shift = (weights @ self.block_sums) / n
        cov = self._outer_sum(weights)
        # In place, element by element as (outer - n * shift shift^T) / (n - 1).
        cov -= n * np.outer(shift, shift)
        cov /= n - 1
        return self.mean + shift, cov


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


INTERVAL_METHODS = ("basic", "percentile")


def bootstrap_interval(estimate: float, replicates: np.ndarray, confidence: float, method: str) -> list[float]:
    """A bootstrap confidence interval for the population value.

    ``percentile``: the quantiles of the replicates. ``basic`` (reverse percentile):
    ``[2 e - q_high, 2 e - q_low]``, which removes the first-order bias that the replicates show
    around the estimate. Plug-in MMD and FD are biased upwards by sampling noise (of order d / n),
    and their replicates are biased upwards again, so percentile intervals sit above the estimate and
    cover the population value poorly at n ~ d; basic intervals do not (tests/test_distances.py).
    """
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    if method == "percentile":
        return [float(low), float(high)]
    if method == "basic":
        return [float(2 * estimate - high), float(2 * estimate - low)]
    raise PipelineError(f"unknown interval method {method!r}; expected one of {INTERVAL_METHODS}")


def bootstrap(
    corpus: Moments, domain: Moments, *, resamples: int, confidence: float, seed: int, method: str = "basic"
) -> dict:
    """Intervals and bootstrap bias of MMD and FD from ``resamples`` joint block-bootstrap resamples."""
    rng = np.random.default_rng(seed)
    mmd, fd = np.empty(resamples), np.empty(resamples)
    for r in range(resamples):
        mean_c, cov_c = corpus.resample(rng)
        mean_d, cov_d = domain.resample(rng)
        mmd[r] = mmd_linear(mean_c, mean_d)
        fd[r] = frechet_distance(mean_c, cov_c, mean_d, cov_d)
    mmd_hat = mmd_linear(corpus.mean, domain.mean)
    fd_hat = frechet_distance(corpus.mean, corpus.cov, domain.mean, domain.cov)
    return {
        "mmd_ci": bootstrap_interval(mmd_hat, mmd, confidence, method),
        "fd_ci": bootstrap_interval(fd_hat, fd, confidence, method),
        "mmd_bootstrap_bias": float(mmd.mean() - mmd_hat),
        "fd_bootstrap_bias": float(fd.mean() - fd_hat),
    }


def load_embeddings(path: str | Path) -> np.ndarray:
    """A memory-mapped (n, d) float array from ``.npy``; a clear error for anything else."""
    try:
        data = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot read embeddings {path}: {exc}") from None
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.floating):
        raise PipelineError(f"{path}: expected a 2-D float array, found shape {data.shape} dtype {data.dtype}")
    return data
