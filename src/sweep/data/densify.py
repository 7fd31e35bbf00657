"""Densify: a sparse batch's CSR parts -> the dense counts scvi-tools' module expects, on the
batch's device (compiled on the CPU, torch ops elsewhere).

A sparse batch carries its counts as ``X_DATA`` (nnz,) int16 or float32, ``X_INDICES`` (nnz,)
int16 or int32 gene indices and ``X_INDPTR`` (n + 1,) int64 row pointers, and ``X_RELEASE`` when
they view a worker's shared-memory slot; :func:`densify` replaces them by ``X`` (n, n_genes).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from scvi import REGISTRY_KEYS

#: keys of the sparse X triple in a batch before :func:`densify`
X_DATA, X_INDICES, X_INDPTR = "X_data", "X_indices", "X_indptr"
#: the call that frees the shared-memory slot the triple views
X_RELEASE = "X_release"


@numba.njit(nogil=True, cache=True)
def _fill_rows(out: np.ndarray, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray) -> None:
    """out[r, indices[k]] = data[k] for the CSR rows r; ``out`` (n, genes) float32, zeroed."""
    for row in range(indptr.shape[0] - 1):
        for k in range(indptr[row], indptr[row + 1]):
            out[row, indices[k]] = data[k]


def dense_counts(
    data: torch.Tensor, indices: torch.Tensor, indptr: torch.Tensor, n_genes: int
) -> torch.Tensor:
    """CSR parts -> (n, n_genes) float32 counts on their device.

    On the CPU one compiled pass over the non-zeros (2.5x torch's scatter); elsewhere torch ops.
    """
    n = indptr.shape[0] - 1
    if data.device.type != "cpu":
        return scatter_counts(data, indices, indptr, n_genes)
    X = torch.zeros((n, n_genes), dtype=torch.float32)
    _fill_rows(X.numpy(), data.numpy(), indices.numpy(), indptr.numpy())
    return X


def scatter_counts(
    data: torch.Tensor, indices: torch.Tensor, indptr: torch.Tensor, n_genes: int
) -> torch.Tensor:
    """:func:`dense_counts` in torch ops alone (any device): one scatter into a flat zeros."""
    n = indptr.shape[0] - 1
    X = torch.zeros(n * n_genes, dtype=torch.float32, device=data.device)
    row_starts = torch.arange(0, n * n_genes, n_genes, device=data.device)
    counts = torch.diff(indptr.to(torch.int64))
    flat = torch.repeat_interleave(row_starts, counts, output_size=data.shape[0])
    X[flat.add_(indices.to(torch.int64))] = data.to(torch.float32)
    return X.view(n, n_genes)


def densify(batch: dict[str, torch.Tensor], n_genes: int) -> dict[str, torch.Tensor]:
    """Replace the CSR parts of ``batch`` by ``X`` (n, n_genes) float32 dense counts, on the
    batch's device, and free the shared-memory slot they came in (if any). A batch read dense
    (``ShardBatches.dense``) passes as it is."""
    if X_DATA not in batch:
        return batch
    data, indices, indptr = batch.pop(X_DATA), batch.pop(X_INDICES), batch.pop(X_INDPTR)
    release = batch.pop(X_RELEASE, None)
    batch[REGISTRY_KEYS.X_KEY] = dense_counts(data, indices, indptr, n_genes)
    if release is not None:
        release()
    return batch
