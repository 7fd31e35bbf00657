"""Batch definitions (the ``batch`` group): obs code columns -> scVI batch and covariate codes.

A batch is the combination of ``batch_keys`` values a cell has; only combinations that occur among
the selected cells become categories (not the product of all values). Labels join the decoded
values with a separator: CZI joins with none, so distinct combinations can produce one label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sweep.data.store import CODED_COLUMNS


@dataclass
class BatchEncoding:
    """Codes for every store cell; -1 where the cell is not selected.

    ``batch_codes`` (n_cells,) into ``batch_categories``; ``covariate_codes`` (n_cells, k),
    column j into ``covariate_categories[covariate_keys[j]]``. Both in the narrowest signed dtype
    that holds their codes and -1 (:func:`code_dtype`): they live as long as training, 1 + k
    bytes per cell of the store below 128 categories.
    """

    batch_categories: list[str]
    batch_codes: np.ndarray
    covariate_keys: list[str]
    covariate_categories: dict[str, list[str]]
    covariate_codes: np.ndarray

    @property
    def n_batch(self) -> int:
        return len(self.batch_categories)


def check_columns(batch_keys: list[str], covariate_keys: list[str], store: str) -> None:
    """Fail before training if a batch definition names a column the store does not carry."""
    missing = [c for c in [*batch_keys, *covariate_keys] if c not in CODED_COLUMNS]
    if missing:
        raise ValueError(
            f"the batch definition names obs column(s) {missing} that the store {store} lacks; "
            f"it has {list(CODED_COLUMNS)} (set batch.batch_keys / batch.covariate_keys to those)"
        )


def code_dtype(n_categories: int) -> np.dtype:
    """The narrowest signed integer dtype holding codes -1 .. ``n_categories`` - 1."""
    return next(
        np.dtype(d) for d in (np.int8, np.int16, np.int32) if n_categories <= np.iinfo(d).max + 1
    )


def _encode_combinations(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows of ``codes`` (n, k) non-negative ints, sorted, and each row's index into them
    (n,). Each row is packed into one int64 key (mixed radix: the key order is the rows' order),
    ~14x faster than ``np.unique(axis=0)`` on millions of cells; rows whose keys would overflow
    (radices multiplying past 2**62) take ``np.unique(axis=0)``."""
    codes = np.asarray(codes)
    radices = codes.max(axis=0, initial=0).astype(np.int64) + 1
    if not len(codes) or np.prod(radices.astype(float)) >= 2.0**62:
        combos, inverse = np.unique(codes, axis=0, return_inverse=True)
        return combos, inverse.reshape(-1)
    weights = np.cumprod(np.r_[radices[1:], 1][::-1])[::-1]  # weight_j = prod(radices[j+1:])
    keys, inverse = np.unique(codes.astype(np.int64) @ weights, return_inverse=True)
    combos = (keys[:, None] // weights) % radices
    return combos.astype(codes.dtype), inverse.reshape(-1)


def encode_batches(
    columns: dict[str, np.ndarray],
    vocab: dict[str, list[str]],
    selected: np.ndarray,
    batch_keys: list[str],
    covariate_keys: list[str],
    separator: str,
) -> BatchEncoding:
    """Build batch and covariate codes from the store's obs codes.

    ``columns[name]`` (n_cells,) int codes into ``vocab[name]``; ``selected`` (n_cells,) bool.
    """
    n = selected.shape[0]
    stacked = np.stack([columns[key][selected] for key in batch_keys], axis=1)
    combos, inverse = _encode_combinations(stacked)
    labels = [
        separator.join(vocab[key][code] for key, code in zip(batch_keys, combo, strict=True))
        for combo in combos
    ]
    batch_codes = np.full(n, -1, dtype=code_dtype(len(labels)))
    batch_codes[selected] = inverse

    covariate_categories, inverses = {}, []
    for key in covariate_keys:
        present, inverse = _encode_combinations(columns[key][selected][:, None])
        covariate_categories[key] = [vocab[key][code] for code in present[:, 0]]
        inverses.append(inverse)
    widest = max(map(len, covariate_categories.values()), default=0)
    covariate_codes = np.full((n, len(covariate_keys)), -1, dtype=code_dtype(widest))
    for j, inverse in enumerate(inverses):
        covariate_codes[selected, j] = inverse
    return BatchEncoding(
        labels, batch_codes, list(covariate_keys), covariate_categories, covariate_codes
    )
