"""The unintegrated baseline every scoring is compared with, as scib does: PCA of the
log-normalised counts of the same cells."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def pca_baseline(X: sp.csr_matrix, n_pcs: int = 50) -> np.ndarray:
    """The unintegrated embedding: PCA of log1p(counts normalised to 10^4 per cell), (n, n_pcs)
    with at most ``min(n cells, n genes) - 1`` components (ARPACK's limit)."""
    from sklearn.decomposition import PCA

    totals = np.asarray(X.sum(axis=1)).ravel()
    normalised = sp.diags(1e4 / np.maximum(totals, 1)) @ X
    logged = normalised.log1p().toarray()
    n_pcs = min(n_pcs, min(logged.shape) - 1)
    return PCA(n_components=n_pcs, svd_solver="arpack", random_state=0).fit_transform(logged)
