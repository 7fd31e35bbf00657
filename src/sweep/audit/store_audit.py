"""One audit of a prepared store, from its obs columns alone (never X): read them, count.

The cells counted are the primary ones (``is_primary_data``, as training sees them) before any
gene filter, except where a batch option's own filter says otherwise (its categories are those
among the cells that filter keeps).
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sweep.audit import names
from sweep.audit.categories import (
    OptionCategories,
    batch_options,
    default_batch_option,
    option_categories,
)
from sweep.audit.gene_filter import FilterRemovals, filter_removals, genes_per_cell
from sweep.audit.protocols import PairProtocols, pair_protocols
from sweep.data.selection import CellTable
from sweep.data.store import CODED_COLUMNS, IS_PRIMARY, N_GENES_ALL, check_store
from sweep.evaluation.health import SMALL_BATCH_CELLS

log = logging.getLogger(__name__)


@dataclass
class Audit:
    """What the audit found on one store.

    ``filters``: threshold -> what it removes; ``genes_by_assay``: (n_assays, max genes + 1)
    primary cells per assay and expressed genes, rows named by ``assays``; ``options``: batch
    option -> its categories; ``seconds``: the audit's wall time.
    """

    store: Path
    n_cells: int
    primary_cells: int
    pairs: PairProtocols
    filters: dict[int, FilterRemovals]
    assays: list[str]
    genes_by_assay: np.ndarray
    options: dict[str, OptionCategories]
    default_option: str | None
    seconds: float = 0.0

    def to_json(self) -> dict:
        """audit.json: the counts by their :mod:`sweep.audit.names` keys."""
        return {
            names.STORE: str(self.store),
            names.N_CELLS: self.n_cells,
            names.PRIMARY_CELLS: self.primary_cells,
            names.NON_PRIMARY_CELLS: self.n_cells - self.primary_cells,
            **self.pairs.counts(),
            **{names.primary_below_genes(t): f.removed for t, f in self.filters.items()},
            names.MIN_GENES_FILTER: {str(t): f.summary() for t, f in self.filters.items()},
            names.BATCH_CATEGORIES: {o: c.n_categories for o, c in self.options.items()},
            names.DEFAULT_BATCH_OPTION: self.default_option,
            names.BATCH_OPTIONS: {o: c.summary() for o, c in self.options.items()},
            names.SECONDS: self.seconds,
        }


def thresholds(min_genes: list[int] | tuple[int, ...] = ()) -> list[int]:
    """The gene filter thresholds to report: 300 (CZI's) and those asked, sorted, once each."""
    return sorted({names.DEFAULT_MIN_GENES, *map(int, min_genes)})


def audit_store(
    store: str | Path,
    min_genes: list[int] | tuple[int, ...] = (),
    options: list[str] | None = None,
) -> Audit:
    """Audit the prepared ``store`` from its obs columns.

    Parameters
    ----------
    store
        A prepared store folder (``scvi-sweep-prepare``); checked first (a missing, incomplete
        or damaged store raises :class:`~sweep.data.store.StoreError`).
    min_genes
        Gene filter thresholds to report besides 300 (expressed genes over all source genes).
    options
        The ``batch`` options whose categories to count; None: every file of ``conf/batch/``.

    Returns
    -------
    Audit
        The counts; :func:`sweep.audit.writing.write_audit` writes them out. Memory: about
        10 bytes a cell for the obs columns, plus a few 8-byte temporaries a primary cell.
    """
    start = time.perf_counter()
    store = Path(store).expanduser().resolve()
    manifest = check_store(store)
    table = CellTable.read(store, manifest, [*CODED_COLUMNS, N_GENES_ALL, IS_PRIMARY])
    columns, vocab = table.columns, manifest.vocab
    primary = columns[IS_PRIMARY].astype(bool)
    n_genes_all = columns[N_GENES_ALL]
    log.info("audit of %s: read the obs of %d cells", store, table.n_cells)
    pairs = pair_protocols(columns, vocab, primary)
    filters = {
        t: filter_removals(columns, vocab, primary, n_genes_all, t) for t in thresholds(min_genes)
    }
    by_assay = genes_per_cell(columns["assay"], len(vocab["assay"]), primary, n_genes_all)
    splits: dict = {}
    chosen = batch_options() if options is None else list(options)
    categories = {o: option_categories(table, vocab, store, o, splits) for o in chosen}
    audit = Audit(
        store=store,
        n_cells=table.n_cells,
        primary_cells=int(primary.sum()),
        pairs=pairs,
        filters=filters,
        assays=list(vocab["assay"]),
        genes_by_assay=by_assay,
        options=categories,
        default_option=default_batch_option(),
    )
    audit.seconds = time.perf_counter() - start
    return audit


def audit_command(store: str | Path) -> str:
    """The shell command that writes the full audit of ``store``."""
    return f"scvi-sweep-audit {shlex.quote(str(store))}"


def store_summary(store: str | Path) -> list[str]:
    """:func:`summary_lines` of an audit of ``store`` that builds only the default batch
    option's categories (what prepare logs at its end)."""
    default = default_batch_option()
    return summary_lines(audit_store(store, options=[default] if default else []))


def summary_lines(audit: Audit) -> list[str]:
    """A few lines for a log: pairs with several protocols, primary cells below 300 genes,
    the default batch option's categories (when audited) and the command of the full audit."""
    pairs, below = audit.pairs, audit.filters[names.DEFAULT_MIN_GENES]
    lines = [
        f"audit: {pairs.n_multi:,} of {pairs.n_pairs:,} (dataset, donor) pairs were profiled "
        f"with more than one assay or suspension type ({pairs.cells_in_multi:,} of "
        f"{audit.primary_cells:,} primary cells)",
        f"audit: {below.removed:,} primary cells ({below.share:.1%}) have fewer than "
        f"{below.min_genes} expressed genes (data=min_genes_300 leaves them out)",
    ]
    option = audit.options.get(audit.default_option)
    if option is not None and option.error is None:
        lines.append(
            f"audit: batch={option.option} makes {option.n_categories:,} batch categories, "
            f"{option.n_small:,} of them under {SMALL_BATCH_CELLS} training cells"
        )
    lines.append(f"audit: the full audit (report.md, audit.json): {audit_command(audit.store)}")
    return lines
