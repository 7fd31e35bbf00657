"""The names of what a run measures: metrics.json keys and the columns of history.csv, steps.csv
and integration.csv, in one place for every layer that writes or reads them (the data split's
cell counts, training, evaluation, the reports).

Kept at the top of the package, below everything that uses it, because every layer shares it
and it imports nothing.
"""

#: the N-th finished epoch, counted from 1 (Lightning's ``current_epoch`` + 1); in step-indexed
#: rows the epochs trained so far, fractional (CELLS_SEEN / training cells)
EPOCH = "epoch"
#: optimizer steps so far (Lightning's ``global_step``); training cells so far, all DDP ranks'
GLOBAL_STEP, CELLS_SEEN = "global_step", "cells_seen"
ELBO_VALIDATION = "elbo_validation"
RECONSTRUCTION_VALIDATION = "reconstruction_loss_validation"
KL_LOCAL_VALIDATION = "kl_local_validation"
KL_WEIGHT = "kl_weight"
#: training cells/s, and training time (s, validation excluded)
TRAIN_CELLS_PER_S, TRAIN_TIME = "train_cells_per_s", "train_time_s"
#: epochs trained (metrics.json)
EPOCHS = "epochs"
#: the validation cells of the step-level validation loss (metrics.json; steps.csv's)
STEP_VALIDATION_CELLS = "step_validation_cells"
#: integration scores (scib's Total = 0.4 batch + 0.6 bio): metrics.json, per evaluated epoch in
#: history.csv and integration.csv
BIO, BATCH, TOTAL = "bio_conservation", "batch_correction", "integration_total"
#: prefix of the unintegrated (PCA) baseline's scores
BASELINE_PREFIX = "pca_"
#: prefixes of the convergence metrics: ``epochs_to_<tolerance>_<metric>`` and the same in
#: training cells seen, ``cells_to_<tolerance>_<metric>``
CONVERGENCE_PREFIX, CELLS_CONVERGENCE_PREFIX = "epochs_to_", "cells_to_"
#: metrics.json: the job's overrides (a list) and config group choices (group -> option)
OVERRIDES, CHOICES = "overrides", "choices"

# --- the data split's cell counts (metrics.json; sweep.data.selection counts them) ------------

#: cells in the store; not primary data; left after the ``data`` filter; training cells
CELLS_IN_STORE, CELLS_NOT_PRIMARY = "cells_in_store", "cells_not_primary"
CELLS_AFTER_FILTER, CELLS_TRAIN = "cells_after_filter", "cells_train"
#: validation cells the validation losses are measured on
CELLS_VALIDATION = "cells_validation"
#: store cells outside the value filter (``data.keep``: a listed column's value not listed);
#: recorded when it is set
CELLS_OUTSIDE_KEEP = "cells_outside_keep"
#: ``data.max_cells`` (training cells asked for), and the filtered cells (training and
#: validation) its stratified subsample left out; recorded when it is set
MAX_CELLS, CELLS_NOT_SUBSAMPLED = "max_cells", "cells_not_subsampled"
#: how ``data.keep`` and ``data.max_cells`` narrowed the cells, in words (run page, reports)
DATA_SUBSET = "data_subset"


def cells_below_genes(min_genes: int) -> str:
    """The name of the count of cells with fewer than ``min_genes`` expressed genes
    (``cells_below_300_genes``)."""
    return f"cells_below_{min_genes}_genes"


# --- the run's health (metrics.json; sweep.evaluation.health judges it) ------------------------

#: check -> message, for each check the run failed
HEALTH = "health"
#: the validation loss's relative change in the last epoch, (last - previous) / |previous|
LOSS_CHANGE = "elbo_validation_change_last_epoch"
#: the fewest training cells of a batch category; how many categories are small; the smallest
MIN_BATCH_CELLS = "batch_category_min_cells"
SMALL_BATCHES = "small_batch_categories"
SMALLEST_BATCHES = "smallest_batch_categories"
#: the health checks (keys of HEALTH)
WARMUP, STILL_FALLING, BELOW_BASELINE = "kl_warmup_unfinished", "still_falling", "below_baseline"

# --- what was trained, and how (metrics.json) -------------------------------------------------

#: the job's name (sweep.training.tracking.job_identity); the store it trained on
JOB_NAME, STORE = "job_name", "store"
#: batch categories of the model; levels of each categorical covariate; genes
N_BATCH, N_CATS_PER_COV, N_GENES = "n_batch", "n_cats_per_cov", "n_genes"
#: the built model's sizes, read from its layers: genes, hidden units and layers of the encoder,
#: latent dimensions, trainable parameters
MODEL_GENES, MODEL_HIDDEN, MODEL_LAYERS = "model_genes", "model_hidden", "model_layers"
MODEL_LATENT, MODEL_PARAMETERS = "model_latent", "model_parameters"
#: the cells the integration scores were computed on
EVALUATION_CELLS = "evaluation_cells"
#: whether the last training step ran at the full KL weight
KL_WARMUP_COMPLETE = "kl_warmup_complete"
#: the job's wall time (s) and peak resident memory (MiB, with its finished children)
WALL_TIME, PEAK_RSS = "wall_time_s", "peak_rss_mb"
#: the evaluation batches the scores rest on: how many, the fewest and the median evaluation
#: cells of one, and how the cells were chosen (words)
EVALUATION_BATCHES = "evaluation_batches"
EVALUATION_BATCH_CELLS_MIN, EVALUATION_BATCH_CELLS_MEDIAN = (
    "evaluation_batch_cells_min",
    "evaluation_batch_cells_median",
)
EVALUATION_CHOICE = "evaluation_cells_chosen"
#: why batch correction (and the total, 0.4 batch + 0.6 bio) could not be scored, when so; the
#: scores are then null
BATCH_NOT_APPLICABLE = "batch_correction_not_applicable"

# --- where an Optuna trial was pruned (metrics.json; sweep.study.pruning) ----------------------

#: training cells seen (all DDP ranks) and epochs trained, fractional (cells seen / training cells),
#: when the trial was pruned (the epoch it was pruned in: sweep.study.attrs.PRUNED_AT)
PRUNED_AT_CELLS_SEEN = "pruned_at_cells_seen"
PRUNED_AT_FRACTIONAL_EPOCH = "pruned_at_fractional_epoch"
