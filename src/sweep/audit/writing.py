"""The audit's output folder: ``report.md`` (the answers in words, then tables), ``audit.json``,
CSVs with every row the report shortens, and the figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sweep.audit import figures, names
from sweep.audit.categories import OptionCategories
from sweep.audit.gene_filter import MIN_CELLS_TO_NAME, FilterRemovals
from sweep.audit.store_audit import Audit, audit_command
from sweep.evaluation.health import SMALL_BATCH_CELLS
from sweep.paths import reports_dir
from sweep.report.render import markdown_table

#: rows of the pairs table and of each per-column filter table in report.md (CSVs hold all)
TOP_ROWS = 20
#: the words for the filter's columns
COLUMN_WORDS = {
    "dataset_id": "dataset",
    "assay": "assay",
    "suspension_type": "suspension type",
    "cell_type": "cell type",
    "tissue": "tissue",
}


def default_output(store: str | Path) -> Path:
    """``multirun_reports/audit-<store folder name>/`` (:func:`sweep.paths.reports_dir`); when
    that folder holds the audit of another store, the first free ``-2``, ``-3``, ... beside it."""
    store = Path(store).expanduser().resolve()
    base = reports_dir() / f"audit-{store.name}"
    out, n = base, 1
    while (out / names.JSON_FILE).is_file() and _audited_store(out) != str(store):
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _audited_store(folder: Path) -> str | None:
    try:
        return json.loads((folder / names.JSON_FILE).read_text()).get(names.STORE)
    except (OSError, ValueError, AttributeError):
        return None


def _pct(share: float) -> str:
    return f"{share:.1%}"


def _pairs_words(audit: Audit) -> str:
    pairs = audit.pairs
    compared = audit.options.get("dataset_donor"), audit.options.get("czi_concat")
    if pairs.n_multi == 0:
        return (
            f"**No.** None of the {pairs.n_pairs:,} (dataset, donor) pairs of the "
            f"{audit.primary_cells:,} primary cells was profiled with more than one assay or "
            "suspension type: a (dataset, donor) pair names its protocol, so `dataset_donor` and "
            "`czi_concat` make the same categories on this store."
        )
    counts = ""
    if all(o is not None and o.error is None for o in compared):
        counts = (
            f" (after the filter: {compared[0].n_categories:,} categories with `dataset_donor`, "
            f"{compared[1].n_categories:,} with `czi_concat`)"
        )
    return (
        f"**Yes.** {pairs.n_multi:,} of the {pairs.n_pairs:,} (dataset, donor) pairs "
        f"({_pct(pairs.n_multi / pairs.n_pairs)}), in {pairs.datasets_with_multi:,} datasets, "
        f"were profiled with more than one assay or suspension type ({pairs.n_multi_assay:,} with "
        f"several assays, {pairs.n_multi_suspension:,} with several suspension types); they hold "
        f"{pairs.cells_in_multi:,} of the {audit.primary_cells:,} primary cells "
        f"({_pct(pairs.cells_in_multi / max(audit.primary_cells, 1))}). `batch=dataset_donor` "
        "puts each such pair's protocols into one batch category, `czi_concat` splits them"
        f"{counts}; `covariates` models assay and suspension type beside dataset + donor."
    )


def _filter_words(removals: FilterRemovals) -> str:
    named = []
    for column, word in COLUMN_WORDS.items():
        top = removals.most_affected(column)
        if top:
            row = top["by_share"]
            named.append(
                f"{word} `{row[names.CATEGORY]}` ({_pct(row[names.REMOVED_SHARE])} of its "
                f"{row[names.CELLS]:,})"
            )
    datasets = removals.most_affected("dataset_id")
    most = (
        f"; the most cells from dataset `{datasets['by_cells'][names.CATEGORY]}` "
        f"({datasets['by_cells'][names.REMOVED]:,})"
        if datasets
        else ""
    )
    largest = f"; largest shares: {', '.join(named)}" if named else ""
    return (
        f"`min_genes={removals.min_genes}` removes {removals.removed:,} of the "
        f"{removals.primary_cells:,} primary cells ({_pct(removals.share)}){largest}{most}."
    )


def _option_words(result: OptionCategories) -> str:
    keys = " + ".join(result.batch_keys)
    covariates = (
        f", covariates {' + '.join(result.covariate_keys)}" if result.covariate_keys else ""
    )
    if result.error:
        return f"`{result.option}` (batch = {keys}{covariates}): cannot be built: {result.error}"
    if not result.n_categories:
        return f"`{result.option}` (batch = {keys}{covariates}): its filter keeps no cells."
    small_cells = int(result.cells[result.cells < SMALL_BATCH_CELLS].sum())
    words = (
        f"`{result.option}` (batch = {keys}{covariates}): {result.n_categories:,} categories "
        f"among the {result.cells_kept:,} cells its filter keeps; training cells per category "
        f"{int(result.cells.min()):,} to {int(result.cells.max()):,} (median "
        f"{np.median(result.cells):,.0f}); {result.n_small:,} under {SMALL_BATCH_CELLS} "
        f"training cells, holding {small_cells:,} of the {result.training_cells:,}"
    )
    empty = int((result.cells == 0).sum())
    words += f" ({empty:,} with none: all their cells validate)." if empty else "."
    for key, levels in result.covariate_levels.items():
        listed = ", ".join(f"{level} ({cells:,})" for level, cells in levels.items())
        words += f" {key}: {len(levels)} levels, {listed}."
    return words


def _filter_tables(removals: FilterRemovals) -> list[str]:
    lines = [f"### min_genes={removals.min_genes}", ""]
    for column, word in COLUMN_WORDS.items():
        rows = removals.of(column)
        shown = rows.head(TOP_ROWS)
        more = f" (the {TOP_ROWS} with the most removed cells of {len(rows):,})"
        title = f"By {word}{more if len(rows) > TOP_ROWS else ''}:"
        frame = pd.DataFrame(
            {
                word: shown[names.CATEGORY],
                "primary cells": shown[names.CELLS].map("{:,}".format),
                "removed": shown[names.REMOVED].map("{:,}".format),
                "removed share": shown[names.REMOVED_SHARE].map(_pct),
            }
        )
        lines += [title, "", markdown_table(frame), ""]
    return lines


def _options_table(options: dict[str, OptionCategories]) -> str:
    rows = []
    for option, result in options.items():
        cells = result.cells if result.cells.size else np.zeros(1, np.int64)
        rows.append(
            {
                "option": f"`{option}`",
                "batch keys": " + ".join(result.batch_keys),
                "covariates": " + ".join(result.covariate_keys) or "-",
                "cells kept": f"{result.cells_kept:,}",
                "training cells": f"{result.training_cells:,}",
                "categories": f"{result.n_categories:,}",
                f"< {SMALL_BATCH_CELLS}": f"{result.n_small:,}",
                "no training cell": f"{int((result.cells == 0).sum()):,}",
                "min": f"{int(cells.min()):,}",
                "median": f"{np.median(cells):,.0f}",
                "max": f"{int(cells.max()):,}",
            }
        )
    return markdown_table(pd.DataFrame(rows))


def _counted_over(audit: Audit) -> str:
    filters = {json.dumps(r.data_filter, sort_keys=True) for r in audit.options.values()}
    data = " / ".join(
        ", ".join(f"{k}={v}" for k, v in json.loads(f).items() if v not in (None, {}, []))
        for f in sorted(filters)
    )
    return (
        "Category sizes count training cells (the cells the option's data filter keeps, outside "
        f"the validation split): each option composed as training composes it (data: {data}), "
        "its cells selected, split and encoded by the training code (sweep.data.selection, "
        f"sweep.data.batches); small = under {SMALL_BATCH_CELLS} training cells "
        "(sweep.evaluation.health.SMALL_BATCH_CELLS)."
    )


def report_lines(audit: Audit, files: dict[str, Path | None]) -> list[str]:
    """report.md's lines: the answers in words, then the tables, then the files."""
    pairs = audit.pairs
    lines = [
        f"# Data audit: {audit.store.name}",
        "",
        f"Store `{audit.store}`: {audit.n_cells:,} cells, {audit.primary_cells:,} primary "
        f"(`is_primary_data`); the counts below are over primary cells before any gene filter, "
        f"as training sees them, unless a batch option's filter is named. Audited from the "
        f"obs columns alone in {audit.seconds:.1f} s (`{audit_command(audit.store)}`).",
        "",
        "## Answers",
        "",
        f"- **Is one (dataset, donor) profiled with more than one assay or suspension type?** "
        f"{_pairs_words(audit)}",
        "- **What does the gene filter remove?** "
        + " ".join(_filter_words(f) for f in audit.filters.values())
        + f" (largest shares among categories of at least {MIN_CELLS_TO_NAME} primary cells.)",
        "- **What batch categories does each `batch` option make?**",
        *(f"  - {_option_words(r)}" for r in audit.options.values()),
        f"  - {_counted_over(audit)}",
        "",
        "## (dataset, donor) pairs with more than one assay or suspension type",
        "",
    ]
    if pairs.n_multi:
        shown = pairs.table.head(TOP_ROWS)
        more = f"The {len(shown)} with the most primary cells of {pairs.n_multi:,}; all: "
        lines += [
            f"{more if pairs.n_multi > TOP_ROWS else 'All of them; also in '}`{names.PAIRS_CSV}`.",
            "",
            markdown_table(shown.assign(**{names.CELLS: shown[names.CELLS].map("{:,}".format)})),
            "",
        ]
    else:
        lines += ["None.", ""]
    lines += ["## The gene filter", "", "Primary cells per category, and those it removes.", ""]
    for removals in audit.filters.values():
        lines += _filter_tables(removals)
    lines += ["## Batch categories per option", "", _options_table(audit.options), ""]
    lines += [_counted_over(audit), ""]
    for name, path in files.items():
        if path is not None and path.suffix == ".png":
            lines += [f"![{name}]({path.name})", ""]
    lines += ["## Files", "", *(f"- `{p.name}`" for p in files.values() if p is not None), ""]
    return lines


def write_audit(audit: Audit, out_dir: str | Path) -> Path:
    """Write the audit into ``out_dir`` (created): report.md, audit.json, the CSVs and the
    figures. Returns the path of report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path | None] = {}
    files["pairs"] = out / names.PAIRS_CSV
    audit.pairs.table.to_csv(files["pairs"], index=False)
    for t, removals in audit.filters.items():
        files[f"filter {t}"] = out / names.filter_csv(t)
        removals.table.to_csv(files[f"filter {t}"], index=False)
    for option, result in audit.options.items():
        files[f"categories {option}"] = out / names.categories_csv(option)
        pd.DataFrame(
            {names.CATEGORY: result.categories, names.TRAINING_CELLS: result.cells}
        ).sort_values(names.TRAINING_CELLS).to_csv(files[f"categories {option}"], index=False)
    files["batch category sizes"] = figures.category_sizes_figure(
        audit.options, out / names.SIZES_FIGURE
    )
    for t, removals in audit.filters.items():
        files[f"min_genes={t}"] = figures.filter_figure(removals, out / names.filter_figure(t))
    files["expressed genes per cell"] = figures.genes_figure(
        audit.assays, audit.genes_by_assay, list(audit.filters), out / names.GENES_FIGURE
    )
    (out / names.JSON_FILE).write_text(json.dumps(audit.to_json(), indent=1, default=_plain))
    files["json"] = out / names.JSON_FILE
    report = out / names.REPORT_FILE
    report.write_text("\n".join(report_lines(audit, files)))
    return report


def _plain(value):
    """numpy scalars in audit.json as Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
