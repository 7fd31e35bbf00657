"""The names the audit writes: ``audit.json``'s keys, its tables' columns, its files.

One place, so that the report, the JSON, the tests and prepare's summary say the same thing.
"""

from __future__ import annotations

# audit.json: the store and its cells
STORE = "store"
N_CELLS = "n_cells"
PRIMARY_CELLS = "primary_cells"
NON_PRIMARY_CELLS = "non_primary_cells"
SECONDS = "seconds"

# audit.json: (dataset, donor) pairs over primary cells, before any gene filter
DATASET_DONOR_PAIRS = "dataset_donor_pairs"
PAIRS_MULTI_ASSAY = "pairs_multi_assay"
PAIRS_MULTI_SUSPENSION = "pairs_multi_suspension"
PAIRS_MULTI = "pairs_multi_assay_or_suspension"
CELLS_IN_MULTI_PAIRS = "cells_in_multi_pairs"
DATASETS_WITH_MULTI_PAIRS = "datasets_with_multi_pairs"


def primary_below_genes(min_genes: int) -> str:
    """audit.json's count of primary cells with fewer than ``min_genes`` expressed genes over
    all source genes (``primary_below_300_genes``)."""
    return f"primary_below_{min_genes}_genes"


#: the gene filter's threshold every audit reports (CZI's; ``data=min_genes_300``)
DEFAULT_MIN_GENES = 300
PRIMARY_BELOW_300_GENES = primary_below_genes(DEFAULT_MIN_GENES)
#: audit.json: per threshold, the removed cells and the most affected category of each column
MIN_GENES_FILTER = "min_genes_filter"

# audit.json: the batch options
BATCH_CATEGORIES = "batch_categories"  # option -> categories among the cells its filter keeps
BATCH_OPTIONS = "batch_options"  # option -> the details below
DEFAULT_BATCH_OPTION = "default_batch_option"
BATCH_KEYS = "batch_keys"
COVARIATE_KEYS = "covariate_keys"
DATA_FILTER = "data_filter"
CELLS_KEPT = "cells_kept"
TRAINING_CELLS = "training_cells"
SMALL_CATEGORIES = "small_categories"
SMALL_CATEGORY_CELLS = "small_category_cells"  # the threshold (health.SMALL_BATCH_CELLS)
EMPTY_CATEGORIES = "categories_without_training_cells"
CATEGORY_SIZES = "training_cells_per_category"  # min, quantiles, max
COVARIATE_LEVELS = "covariate_levels"
ERROR = "error"

# table columns
DATASET_ID = "dataset_id"
DONOR_ID = "donor_id"
CELLS = "cells"
N_ASSAYS = "n_assays"
N_SUSPENSION_TYPES = "n_suspension_types"
ASSAYS = "assays"
SUSPENSION_TYPES = "suspension_types"
COLUMN = "column"
CATEGORY = "category"
REMOVED = "removed"
REMOVED_SHARE = "removed_share"

#: the obs columns whose categories the gene filter's removals are counted by
FILTER_COLUMNS = ("dataset_id", "assay", "suspension_type", "cell_type", "tissue")

# the output folder's files
REPORT_FILE = "report.md"
JSON_FILE = "audit.json"
PAIRS_CSV = "multi_protocol_pairs.csv"
SIZES_FIGURE = "batch_category_sizes.png"
GENES_FIGURE = "genes_per_cell.png"


def filter_csv(min_genes: int) -> str:
    """The CSV of what ``min_genes`` removes per category (``min_genes_300.csv``)."""
    return f"min_genes_{min_genes}.csv"


def filter_figure(min_genes: int) -> str:
    """The figure of the share ``min_genes`` removes by assay and dataset."""
    return f"min_genes_{min_genes}_removed.png"


def categories_csv(option: str) -> str:
    """The CSV of batch option ``option``'s categories and their training cells."""
    return f"batch_categories_{option}.csv"
