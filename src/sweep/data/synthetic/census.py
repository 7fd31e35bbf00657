"""The Census shape of the synthetic generator (``shape=census``): heavy-tailed dataset sizes,
donors and cells per donor, donors profiled with a second protocol, and a sparse sampler fast
enough for 8,000 genes.

It keeps the genes and the effects of the uniform shape (sweep.data.synthetic) and changes the
design to the Census's (one dataset ``i`` of ``D``; sizes in cells):

* dataset sizes follow a Pareto law truncated to ``[min_cells_per_dataset,
  max_cells_per_dataset]`` whose exponent is solved so that its mean is ``cells_per_dataset``
  (200..30,000 with mean 500: exponent ~1.6, median ~310, the largest of 900 ~10-30k);
* donors per dataset are ``1 + round(LogNormal)`` with mean ``donors_per_dataset`` (sigma 1),
  at most one per 10 cells (so the mean comes out a little lower: 9.3 for 10 at 200..30,000
  cells); cells per donor are multinomial over log-normal weights (sigma 1);
* the datasets' assays are drawn with CENSUS_ASSAY_SHARES, nuclei with CENSUS_NUCLEUS_SHARE;
  exactly ``round(multi_protocol_donor_fraction * donors)`` donors, chosen over all datasets,
  also have a second protocol (another assay, or the other suspension type; half each), and
  each of a donor's protocols gets at least one cell;
* dataset ``i``'s low-quality share is ``Beta(10 f, 10 (1 - f))`` with ``f =
  low_quality_fraction``; dataset and donor effects are drawn per dataset (stream
  ``(seed, 2, i)``) so the world stays small at thousands of datasets;
* counts are the same negative binomial, drawn sparsely (:func:`sample_counts_sparse`) and
  written to the file chunk by chunk, so a file's count memory is one chunk of 512 cells.

A Census-shaped curriculum: ``python -m sweep.data.synthetic output=DIR shape=census
n_datasets=900 cells_per_dataset=500 n_genes=8000 donors_per_dataset=10``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sweep.config.schema import SyntheticConfig

CENSUS_ASSAY_SHARES = {"10x 3' v3": 0.5, "10x 3' v2": 0.25, "10x 5' v1": 0.15, "Smart-seq2": 0.1}
CENSUS_NUCLEUS_SHARE = 0.25  # share of datasets profiled as nuclei
DONOR_SIGMA = 1.0  # log-normal sigma of donors per dataset and of a donor's weight (cells)
CELLS_PER_DONOR_FLOOR = 10  # a dataset has at most one donor per this many cells
LOW_QUALITY_CONCENTRATION = 10.0  # Beta(c f, c (1 - f)) per-dataset low-quality shares
SPARSE_SPLIT = 1.0  # mean counts from which the sparse sampler draws gamma-Poisson directly
MAX_WALK = 200  # inverse-CDF steps of the sparse sampler (P(count > 200 | mean < 1) < 1e-90)


def pareto_sizes(
    rng: np.random.Generator, n: int, mean: float, low: float, high: float
) -> np.ndarray:
    """(n,) int sizes from a Pareto law truncated to ``[low, high]`` with the given mean.

    The exponent ``a`` solves ``mean = a low / (a - 1) (1 - r^(a-1)) / (1 - r^a)``, ``r = low /
    high`` (bisection; the mean falls as ``a`` grows from ``(high - low) / ln(high / low)`` at 0
    to ``low``); sizes are drawn by inverting the CDF.
    """
    r = low / high
    if not low < mean < (high - low) / np.log(high / low):
        raise ValueError(f"no Pareto law on [{low}, {high}] has the mean {mean}")

    def truncated_mean(a: float) -> float:
        if abs(a - 1) < 1e-9:
            return low * np.log(high / low) / (1 - r)
        return a * low / (a - 1) * (1 - r ** (a - 1)) / (1 - r**a)

    lo, hi = 1e-3, 1e3  # truncated_mean: ~(high - low) / ln(high / low) at lo, ~low at hi
    for _ in range(100):
        a = np.sqrt(lo * hi)
        lo, hi = (a, hi) if truncated_mean(a) > mean else (lo, a)
    u = rng.random(n)
    return np.round(low * (1 - u * (1 - r**a)) ** (-1 / a)).astype(int)


def census_design(
    cfg: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, list[list[list[tuple[str, str]]]]]:
    """Census-shaped sizes (D,) and protocols ``[dataset][donor] -> [(assay, suspension)]``."""
    n_datasets = cfg.n_datasets
    n_cells = pareto_sizes(
        rng, n_datasets, cfg.cells_per_dataset, cfg.min_cells_per_dataset, cfg.max_cells_per_dataset
    )
    extra = cfg.donors_per_dataset - 1  # mean donors beyond the first
    drawn = rng.lognormal(np.log(max(extra, 1e-9)) - DONOR_SIGMA**2 / 2, DONOR_SIGMA, n_datasets)
    most = np.maximum(1, n_cells // CELLS_PER_DONOR_FLOOR)
    n_donors = np.clip(1 + np.round(drawn), 1, most).astype(int)

    assays = list(CENSUS_ASSAY_SHARES)
    first_assay = rng.choice(len(assays), size=n_datasets, p=list(CENSUS_ASSAY_SHARES.values()))
    nucleus = rng.random(n_datasets) < CENSUS_NUCLEUS_SHARE
    design = [
        [[(assays[a], "nucleus" if nuc else "cell")] for _ in range(k)]
        for a, nuc, k in zip(first_assay, nucleus, n_donors, strict=True)
    ]
    # A set share of all donors get a second protocol: another assay or the other suspension.
    donors = [(i, k) for i, n in enumerate(n_donors) for k in range(n)]
    n_multi = round(cfg.multi_protocol_donor_fraction * len(donors))
    for j in np.sort(rng.choice(len(donors), size=n_multi, replace=False)):
        i, k = donors[j]
        assay, suspension = design[i][k][0]
        if rng.random() < 0.5:
            others = [a for a in assays if a != assay]
            design[i][k].append((others[rng.integers(len(others))], suspension))
        else:
            design[i][k].append((assay, "cell" if suspension == "nucleus" else "nucleus"))
    return n_cells, design


def sample_counts_sparse(
    mean: np.ndarray, theta: np.ndarray, rng: np.random.Generator
) -> sp.csr_matrix:
    """NB counts (cells, G) as float32 CSR, with mean ``mean`` (cells, G) and inverse
    dispersion ``theta`` (G,): the law of the uniform shape's sampler
    (:func:`~sweep.data.synthetic.datasets.sample_counts`), drawn ~2x faster.

    An entry with mean ``m`` and ``u = 1 - v``, ``v ~ U[0, 1)``, is the smallest ``k`` with
    ``u < P(count <= k)`` (inverse CDF, pmf by the NB recursion). ``P(count > 0) <= m``, so only
    entries with ``v < m`` are looked at (about a fifth of them at 8,000 genes and 5,000 counts
    a cell); those with ``m >= SPARSE_SPLIT`` are drawn as gamma-Poisson instead of walked.
    """
    n, n_genes = mean.shape
    v = rng.random((n, n_genes))
    where = np.flatnonzero(v < mean)  # every non-zero is here; sorted (row-major)
    m = mean.ravel()[where]
    th = theta[where % n_genes]
    counts = np.zeros(where.size, dtype=np.float32)
    big = m >= SPARSE_SPLIT
    counts[big] = rng.poisson(rng.gamma(th[big], m[big] / th[big]))

    walk = np.flatnonzero(~big)
    u, m, th = 1.0 - v.ravel()[where[walk]], m[walk], th[walk]
    q = m / (th + m)
    p = np.exp(th * np.log1p(-q))  # P(count = 0)
    cdf = p.copy()
    for k in range(1, MAX_WALK + 1):
        going = u >= cdf
        if not going.any():
            break
        walk, u, q, th, p, cdf = walk[going], u[going], q[going], th[going], p[going], cdf[going]
        counts[walk] = k
        p *= (k - 1 + th) / k * q  # P(count = k)
        cdf += p

    kept = counts > 0
    where, counts = where[kept], counts[kept]
    indptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(where // n_genes, minlength=n), out=indptr[1:])
    indices = (where % n_genes).astype(np.int32)
    return sp.csr_matrix((counts, indices, indptr), shape=(n, n_genes))


def census_donors(
    n: int, n_protocols: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(n,) donor and protocol index of each of a dataset's ``n`` cells, its donors having
    ``n_protocols`` (donors,) protocols each: multinomial over log-normal donor weights; each
    protocol of a donor gets one cell first, the rest at random."""
    weights = rng.lognormal(0.0, DONOR_SIGMA, len(n_protocols))
    per_donor = n_protocols + rng.multinomial(n - n_protocols.sum(), weights / weights.sum())
    donor = rng.permutation(np.repeat(np.arange(len(per_donor)), per_donor))
    rank = np.empty(n, dtype=int)  # a cell's rank among its donor's cells
    rank[np.argsort(donor, kind="stable")] = np.arange(n) - np.repeat(
        np.cumsum(per_donor) - per_donor, per_donor
    )
    drawn = rng.integers(n_protocols[donor])
    return donor, np.where(rank < n_protocols[donor], rank, drawn)
