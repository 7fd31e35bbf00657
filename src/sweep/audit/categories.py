"""The batch categories each ``batch`` option makes on a store, exactly as training builds them.

Each option is composed with the training config (``compose_train``: ``conf/train.yaml`` with
``batch=<option> dataset=prepared dataset.path=STORE``), so its data filter is the default one
(``data=min_genes_300`` unless the option sets another); the cells are then selected and split
by :func:`sweep.data.selection.split_for` and encoded by
:func:`sweep.data.batches.encode_batches`, the calls the training datamodule makes. A
category's size is its training cells (the filter's cells outside the validation split), the
count run health judges against :data:`sweep.evaluation.health.SMALL_BATCH_CELLS`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from sweep.audit import names
from sweep.data.batches import check_columns, encode_batches
from sweep.data.selection import CellTable, Split, split_for
from sweep.data.selection import log as selection_log
from sweep.evaluation.health import SMALL_BATCH_CELLS
from sweep.paths import CONF_DIR

log = logging.getLogger(__name__)

#: quantiles of the training cells per category that audit.json and the report give
SIZE_QUANTILES = (0.1, 0.5, 0.9)


@dataclass
class OptionCategories:
    """One batch option's categories on the store.

    ``cells`` (n_categories,): training cells of each of ``categories`` (the cells its data
    filter keeps outside the validation split); ``covariate_levels``: per covariate key,
    level -> training cells; ``error``: why the option could not be built on the store (then
    the counts are empty).
    """

    option: str
    batch_keys: list[str]
    covariate_keys: list[str]
    data_filter: dict
    cells_kept: int = 0
    training_cells: int = 0
    categories: list[str] = field(default_factory=list)
    cells: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    covariate_levels: dict[str, dict[str, int]] = field(default_factory=dict)
    error: str | None = None

    @property
    def n_categories(self) -> int:
        return len(self.categories)

    @property
    def n_small(self) -> int:
        """Categories with fewer than SMALL_BATCH_CELLS training cells."""
        return int((self.cells < SMALL_BATCH_CELLS).sum())

    def summary(self) -> dict:
        """audit.json's entry for the option (the category list itself goes to a CSV)."""
        sizes = {}
        if self.cells.size:
            sizes = {"min": int(self.cells.min()), "max": int(self.cells.max())}
            for q in SIZE_QUANTILES:
                sizes[f"q{round(q * 100):02d}"] = float(np.quantile(self.cells, q))
        return {
            names.BATCH_KEYS: self.batch_keys,
            names.COVARIATE_KEYS: self.covariate_keys,
            names.DATA_FILTER: self.data_filter,
            names.CELLS_KEPT: self.cells_kept,
            names.TRAINING_CELLS: self.training_cells,
            names.BATCH_CATEGORIES: self.n_categories,
            names.SMALL_CATEGORIES: self.n_small,
            names.SMALL_CATEGORY_CELLS: SMALL_BATCH_CELLS,
            names.EMPTY_CATEGORIES: int((self.cells == 0).sum()),
            names.CATEGORY_SIZES: sizes,
            names.COVARIATE_LEVELS: self.covariate_levels,
            names.ERROR: self.error,
        }


def batch_options() -> list[str]:
    """The ``batch`` group's options: the files of ``conf/batch/``, sorted by name."""
    return sorted(path.stem for path in (CONF_DIR / "batch").glob("*.yaml"))


def default_batch_option() -> str | None:
    """The ``batch`` option ``conf/train.yaml``'s defaults list picks, or None if it names
    none."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "train.yaml")).get("defaults")
    for entry in defaults or []:
        if isinstance(entry, dict) and "batch" in entry:
            return str(entry["batch"])
    return None


def _quoted(value: str) -> str:
    """``value`` as a Hydra override value: as is when plain, else single-quoted."""
    if re.fullmatch(r"[\w./~+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def compose_option(option: str, store: str | Path):
    """The training config with ``batch=<option>`` on the prepared ``store``.

    Works inside another Hydra app too (``scvi-sweep-prepare`` runs one): that app's Hydra is
    set aside while the training config is composed, and put back after.
    """
    from hydra.core.global_hydra import GlobalHydra

    from sweep.config.schema import compose_train

    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        overrides = [f"batch={option}", "dataset=prepared", f"dataset.path={_quoted(str(store))}"]
        return compose_train(overrides)
    finally:
        if outer is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(outer)


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """``logger`` below WARNING silenced for the block."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _split(table: CellTable, vocab: dict[str, list[str]], data_cfg, cache: dict) -> Split:
    """The split training makes with the ``data`` group ``data_cfg`` (:func:`split_for`, the
    datamodule's call), made once per distinct ``data`` config (``cache``). Raises ValueError
    where training would: the filter leaves no cells, or none to train or validate on."""
    key = json.dumps(OmegaConf.to_container(data_cfg), sort_keys=True)
    if key not in cache:
        try:
            with _quiet(selection_log):  # its "cells:" line would read as a training job's
                cache[key] = split_for(table, vocab, data_cfg)
        except ValueError as err:
            cache[key] = err
    if isinstance(cache[key], ValueError):
        raise cache[key]
    return cache[key]


def option_categories(
    table: CellTable, vocab: dict[str, list[str]], store: str | Path, option: str, cache: dict
) -> OptionCategories:
    """The categories batch option ``option`` makes on ``store``.

    Parameters
    ----------
    table
        The store's obs columns (:class:`~sweep.data.selection.CellTable`: every coded column,
        ``n_genes_all`` and ``is_primary_data``, (n_cells,) each).
    vocab
        The manifest's vocabularies.
    store
        The store folder (the composed config's ``dataset.path``).
    option
        A file name of ``conf/batch/`` without ``.yaml``.
    cache
        Splits already made, by data filter (shared across options: one split per filter).

    Returns
    -------
    OptionCategories
        Categories, their training cells and the covariates' levels; ``error`` set instead
        where training would refuse (a column the store lacks, a filter that leaves no cells
        or none to validate on).
    """
    cfg = compose_option(option, store)
    batch_cfg, data_cfg = cfg.batch, cfg.data
    result = OptionCategories(
        option=option,
        batch_keys=list(batch_cfg.batch_keys),
        covariate_keys=list(batch_cfg.covariate_keys),
        data_filter=OmegaConf.to_container(data_cfg),
    )
    try:  # what training refuses before it builds a model, it refuses here
        if not result.batch_keys:
            raise ValueError("batch.batch_keys is empty")
        check_columns(result.batch_keys, result.covariate_keys, str(store))
        split = _split(table, vocab, data_cfg, cache)
    except ValueError as err:
        result.error = str(err)
        return result
    kept = split.train | split.validation
    result.cells_kept, result.training_cells = int(kept.sum()), int(split.train.sum())
    encoding = encode_batches(
        table.columns,
        vocab,
        kept,
        result.batch_keys,
        result.covariate_keys,
        batch_cfg.separator,
    )
    result.categories = encoding.batch_categories
    result.cells = np.bincount(encoding.batch_codes[split.train], minlength=encoding.n_batch)
    for j, key in enumerate(encoding.covariate_keys):
        levels = encoding.covariate_categories[key]
        cells = np.bincount(encoding.covariate_codes[split.train, j], minlength=len(levels))
        result.covariate_levels[key] = dict(zip(levels, map(int, cells), strict=True))
    return result
