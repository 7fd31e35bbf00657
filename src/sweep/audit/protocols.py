"""(dataset, donor) pairs profiled with more than one assay or suspension type.

The seed's batch-definition question turns on them: ``batch=dataset_donor`` puts the cells of
such a pair into one category whatever their protocol, ``czi_concat`` splits them. Counted over
primary cells (as training sees them), before any gene filter, from the store's obs codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweep.audit import names

#: the obs columns of a cell's (dataset, donor) pair and its protocol, in key order
PROTOCOL_COLUMNS = ("dataset_id", "donor_id", "assay", "suspension_type")


@dataclass
class PairProtocols:
    """What the pairs look like.

    ``table``: one row per pair with more than one assay or suspension type, the most cells
    first, columns dataset_id, donor_id, cells, n_assays, n_suspension_types, assays and
    suspension_types (each ``value (cells); ...``, the most cells first).
    """

    n_pairs: int
    n_multi_assay: int
    n_multi_suspension: int
    n_multi: int
    cells_in_multi: int
    datasets_with_multi: int
    table: pd.DataFrame

    def counts(self) -> dict[str, int]:
        """audit.json's counts, by their :mod:`sweep.audit.names` keys."""
        return {
            names.DATASET_DONOR_PAIRS: self.n_pairs,
            names.PAIRS_MULTI_ASSAY: self.n_multi_assay,
            names.PAIRS_MULTI_SUSPENSION: self.n_multi_suspension,
            names.PAIRS_MULTI: self.n_multi,
            names.CELLS_IN_MULTI_PAIRS: self.cells_in_multi,
            names.DATASETS_WITH_MULTI_PAIRS: self.datasets_with_multi,
        }


def _distinct_per_pair(pair: np.ndarray, value: np.ndarray, n_values: int, n_pairs: int):
    """How many distinct ``value`` codes each pair index in ``pair`` has: (n_pairs,) int64."""
    distinct = np.unique(pair * n_values + value)
    return np.bincount(distinct // n_values, minlength=n_pairs)


def _listing(pair: np.ndarray, value: np.ndarray, cells: np.ndarray, vocab: list[str]) -> dict:
    """pair index -> ``"value (cells); ..."`` summing ``cells`` over (pair, value), the most
    cells first. Arrays (n,) over the protocol combinations of the pairs to list."""
    frame = pd.DataFrame({"pair": pair, "value": value, "cells": cells})
    summed = frame.groupby(["pair", "value"], sort=False)["cells"].sum().reset_index()
    summed = summed.sort_values(["pair", "cells", "value"], ascending=[True, False, True])
    pairs = zip(summed["value"], summed["cells"], strict=True)
    summed["text"] = [f"{vocab[v]} ({c:,})" for v, c in pairs]
    return summed.groupby("pair", sort=False)["text"].agg("; ".join).to_dict()


def pair_protocols(
    columns: dict[str, np.ndarray], vocab: dict[str, list[str]], primary: np.ndarray
) -> PairProtocols:
    """Count (dataset, donor) pairs and those with more than one assay or suspension type.

    Parameters
    ----------
    columns
        The store's obs code columns (``dataset_id``, ``donor_id``, ``assay``,
        ``suspension_type``), each (n_cells,) integer codes into ``vocab[name]``.
    vocab
        The manifest's vocabularies.
    primary
        (n_cells,) bool: the cells counted (``is_primary_data``).

    Returns
    -------
    PairProtocols
        The counts over the ``primary`` cells and the table of pairs with several protocols.
    """
    n_donors, n_assays, n_suspensions = (len(vocab[k]) for k in PROTOCOL_COLUMNS[1:])
    dataset, donor, assay, suspension = (
        columns[k][primary].astype(np.int64) for k in PROTOCOL_COLUMNS
    )
    # one int64 key per (dataset, donor, assay, suspension): a single sort of the primary cells
    combo = ((dataset * n_donors + donor) * n_assays + assay) * n_suspensions + suspension
    combos, cells = np.unique(combo, return_counts=True)
    combo_pair = combos // (n_assays * n_suspensions)
    combo_assay = combos // n_suspensions % n_assays
    combo_suspension = combos % n_suspensions
    pairs, pair_index = np.unique(combo_pair, return_inverse=True)
    n_pairs = len(pairs)
    assays_per_pair = _distinct_per_pair(pair_index, combo_assay, n_assays, n_pairs)
    suspensions_per_pair = _distinct_per_pair(pair_index, combo_suspension, n_suspensions, n_pairs)
    multi = (assays_per_pair > 1) | (suspensions_per_pair > 1)
    pair_cells = np.bincount(pair_index, weights=cells, minlength=n_pairs).astype(np.int64)

    listed = multi[pair_index]
    assay_text = _listing(pair_index[listed], combo_assay[listed], cells[listed], vocab["assay"])
    suspension_text = _listing(
        pair_index[listed], combo_suspension[listed], cells[listed], vocab["suspension_type"]
    )
    which = np.flatnonzero(multi)
    table = pd.DataFrame(
        {
            names.DATASET_ID: [vocab["dataset_id"][p // n_donors] for p in pairs[which]],
            names.DONOR_ID: [vocab["donor_id"][p % n_donors] for p in pairs[which]],
            names.CELLS: pair_cells[which],
            names.N_ASSAYS: assays_per_pair[which],
            names.N_SUSPENSION_TYPES: suspensions_per_pair[which],
            names.ASSAYS: [assay_text[i] for i in which],
            names.SUSPENSION_TYPES: [suspension_text[i] for i in which],
        }
    )
    table = table.sort_values(
        [names.CELLS, names.DATASET_ID, names.DONOR_ID], ascending=[False, True, True]
    ).reset_index(drop=True)
    return PairProtocols(
        n_pairs=n_pairs,
        n_multi_assay=int((assays_per_pair > 1).sum()),
        n_multi_suspension=int((suspensions_per_pair > 1).sum()),
        n_multi=int(multi.sum()),
        cells_in_multi=int(pair_cells[multi].sum()),
        datasets_with_multi=int(table[names.DATASET_ID].nunique()),
        table=table,
    )
