"""When a recorded value settled: the ``epochs_to_*`` and ``cells_to_*`` metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sweep.metric_names import CELLS_CONVERGENCE_PREFIX, CELLS_SEEN, CONVERGENCE_PREFIX, EPOCH


def settled_at(values: pd.Series, positions: pd.Series, tolerance: float) -> float | None:
    """The position (of ``positions``: epochs, counted from 1, or cells seen) from which
    ``values`` stay within ``tolerance`` (relative) of the last value; an int when it is whole;
    None if there are no values."""
    values, positions = values.dropna(), positions[values.dropna().index]
    if values.empty:
        return None
    final = values.iloc[-1]
    outside = np.abs(values.to_numpy() - final) > tolerance * max(abs(final), 1e-12)
    last_outside = np.flatnonzero(outside)
    found = float(positions.iloc[last_outside[-1] + 1 if len(last_outside) else 0])
    return int(found) if found.is_integer() else found


def convergence(tables: dict[str, pd.DataFrame], tolerance: float) -> dict:
    """For each metric name -> the table recording it (history.csv, steps.csv or
    integration.csv rows, in training order): the epochs (``epochs_to_<tolerance>_<name>``) and
    the training cells seen (``cells_to_...``) from which it stays within ``tolerance``
    (relative) of its last value, checked where the table has it."""
    percent = f"{tolerance:.0%}".replace("%", "pct")
    found = {}
    for name, table in tables.items():
        for prefix, position in (
            (CONVERGENCE_PREFIX, EPOCH),
            (CELLS_CONVERGENCE_PREFIX, CELLS_SEEN),
        ):
            found[f"{prefix}{percent}_{name}"] = settled_at(table[name], table[position], tolerance)
    return found
