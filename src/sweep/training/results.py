"""The write step of a training job: history.csv, steps.csv, integration.csv, embedding.csv, the
model and metrics.json into the run folder, the run's health in the log, the run page (by the
caller's writer) and the W&B summary.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scvi

from sweep import metric_names, run_folder
from sweep.evaluation.convergence import convergence
from sweep.evaluation.health import batch_category_sizes, health, last_epoch_change
from sweep.evaluation.scib import AGGREGATES
from sweep.metric_names import HEALTH, LOSS_CHANGE, WARMUP
from sweep.training import tracking
from sweep.training.epoch_stats import KL_WEIGHT_LOGGED
from sweep.training.parts import JobParts
from sweep.training.scoring import IntegrationScoring

log = logging.getLogger(__name__)

#: history columns whose last value becomes a ``final`` metric in metrics.json
FINAL_METRICS = (
    "elbo_train",
    "reconstruction_loss_train",
    "kl_local_train",
    metric_names.ELBO_VALIDATION,
    metric_names.RECONSTRUCTION_VALIDATION,
    metric_names.KL_LOCAL_VALIDATION,
    metric_names.KL_WEIGHT,
)

#: writes a finished run's page into its folder and returns the page's path
PageWriter = Callable[[Path], Path]


def write_results(parts: JobParts, cfg, started: float, write_page: PageWriter | None) -> dict:
    """Write a trained job's run folder (only the writing process calls it); return metrics.json.

    Parameters
    ----------
    parts
        The trained job (:func:`sweep.training.parts.build_parts`).
    cfg
        Its config: ``save_model`` and ``evaluation.convergence_tolerance`` are read here.
    started
        ``time.perf_counter()`` as the job started (for ``wall_time_s``).
    write_page
        Writes the run's page from the finished run folder (the command line passes
        sweep.report.run_report.write_run_report); None: no page.

    Returns
    -------
    The metrics written to metrics.json.
    """
    run_dir, model = parts.run_dir, parts.model
    history = history_frame(model.history)
    run_folder.write_table(run_dir, run_folder.HISTORY_FILE, history)
    steps = pd.DataFrame(parts.step_evaluation.records)
    if len(steps):
        run_folder.write_table(run_dir, run_folder.STEPS_FILE, steps)
    if cfg.save_model:
        model.save(str(run_dir / run_folder.MODEL_DIR), overwrite=True, save_anndata=False)
    metrics = collect_metrics(parts, history, steps, cfg.evaluation, started)
    for check, message in metrics[HEALTH].items():
        if check != WARMUP:  # KlWarmupWatch said it as training ended
            log.warning("run health: %s", message)
    run_folder.write_metrics(run_dir, metrics)
    if write_page is not None:
        log.info("run report: %s", write_page(run_dir))
    if parts.wandb_logger is not None:
        parts.wandb_logger.experiment.summary.update(
            {k: v for k, v in metrics.items() if isinstance(v, int | float) or k == HEALTH}
        )
        tracking.log_pictures(parts.wandb_logger, run_dir)
    return metrics


def collect_metrics(
    parts: JobParts, history: pd.DataFrame, steps: pd.DataFrame, evaluation_cfg, started: float
) -> dict:
    """metrics.json: :func:`summarize`, the model's sizes, convergence of the loss (from the
    finest record of it: ``steps`` when measured between epoch ends, else ``history``), the
    integration scores (integration.csv and embedding.csv are written here), the warm-up, the
    pruning and the run's health."""
    metrics = summarize(parts, history, started)
    metrics.update(model_sizes(parts.model))
    loss_record = steps if len(steps) else history
    tolerance = evaluation_cfg.convergence_tolerance
    metrics.update(convergence({metric_names.ELBO_VALIDATION: loss_record}, tolerance))
    if len(steps):
        metrics[metric_names.STEP_VALIDATION_CELLS] = len(parts.step_evaluation.cells.rows)
    scoring = parts.scoring
    if scoring is not None:
        metrics.update(integration_summary(scoring, evaluation_cfg, parts.run_dir))
        if scoring.layout is not None:  # None when no epoch was left to train (resumed)
            run_folder.write_table(parts.run_dir, run_folder.EMBEDDING_TABLE, scoring.layout)
    metrics[metric_names.KL_WARMUP_COMPLETE] = parts.warmup.complete
    if parts.pruning is not None:
        metrics.update(parts.pruning.summary())
    metrics[HEALTH] = health(metrics, parts.warmup.unfinished)
    return metrics


def history_frame(history: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """scvi-tools' ``model.history`` (one frame per metric) as one table, a row per epoch: epoch
    N is the N-th finished epoch (1, 2, ...; Lightning's ``current_epoch`` + 1).

    Step-indexed entries (Lightning's learning-rate monitor) are left out; EpochStats logs the
    learning rate per epoch instead.
    """
    columns = {
        name: frame.iloc[:, 0]
        for name, frame in history.items()
        if len(frame) and frame.index.name == "epoch"  # scvi-tools' per-epoch frames, 0-based
    }
    columns[metric_names.KL_WEIGHT] = columns.pop(KL_WEIGHT_LOGGED)  # see EpochStats
    table = pd.DataFrame(columns)
    for count in (metric_names.GLOBAL_STEP, metric_names.CELLS_SEEN):  # logged as floats
        table[count] = pd.to_numeric(table[count]).round().astype("Int64")
    table.index = table.index + 1
    table.index.name = metric_names.EPOCH
    return table.reset_index()


#: the kernel's per-process files: the peak RSS (``VmHWM`` in status) and its reset (clear_refs)
PROC_STATUS, PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_rss() -> None:
    """Start this process's peak RSS over from its RSS now, so that a job's peak is its own
    and not an earlier job's of the same process (a ``-m`` sweep's basic launcher); Linux only,
    elsewhere the process's peak stands."""
    with contextlib.suppress(OSError):
        PROC_CLEAR_REFS.write_text("5")  # VmHWM := VmRSS


def peak_rss_mb() -> float:
    """Peak resident memory of this process since :func:`reset_peak_rss` (``VmHWM``; off Linux
    since it started) plus that of its largest finished child (loader workers:
    ``RUSAGE_CHILDREN`` keeps the largest over the process's life, not the sum), in MiB."""
    own_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        status = PROC_STATUS.read_text().splitlines()
        own_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own_kib + children) / 1024


def integration_summary(scoring: IntegrationScoring, evaluation_cfg, run_dir: Path) -> dict:
    """Final integration scores (null where not applicable: one evaluation batch), their
    baseline, when each aggregate settled within ``convergence_tolerance`` of its final value
    (sweep.evaluation.convergence), and the evaluation cells and batches they rest on; every
    scoring goes to integration.csv, in training order."""
    records = pd.DataFrame(scoring.records)  # in training order
    run_folder.write_table(run_dir, run_folder.INTEGRATION_FILE, records)
    settled = convergence(
        {name: records for name in AGGREGATES.values()}, evaluation_cfg.convergence_tolerance
    )
    final = {
        k: None if isinstance(v, float) and np.isnan(v) else v for k, v in scoring.final.items()
    }
    sizes = scoring.cells.batch_sizes()
    cells = {
        metric_names.EVALUATION_CELLS: len(scoring.cells.rows),
        metric_names.EVALUATION_BATCHES: len(sizes),
        metric_names.EVALUATION_BATCH_CELLS_MIN: int(sizes.min()),
        metric_names.EVALUATION_BATCH_CELLS_MEDIAN: float(sizes.median()),
        metric_names.EVALUATION_CHOICE: scoring.cells.choice,
    }
    if scoring.not_applicable:
        cells[metric_names.BATCH_NOT_APPLICABLE] = scoring.not_applicable
    return {**final, **settled, **cells}


def model_sizes(model: scvi.model.SCVI) -> dict:
    """The built model's real sizes, read from its layers (not the config): genes, hidden units
    and layers of the encoder, latent dimensions, trainable parameters."""
    module = model.module
    encoder_layers = [layer[0] for layer in module.z_encoder.encoder.fc_layers]  # their Linear
    return {
        metric_names.MODEL_GENES: module.decoder.px_scale_decoder[0].out_features,
        metric_names.MODEL_HIDDEN: encoder_layers[0].out_features,
        metric_names.MODEL_LAYERS: len(encoder_layers),
        metric_names.MODEL_LATENT: module.z_encoder.mean_encoder.out_features,
        metric_names.MODEL_PARAMETERS: sum(
            p.numel() for p in module.parameters() if p.requires_grad
        ),
    }


def summarize(parts: JobParts, history: pd.DataFrame, started: float) -> dict:
    """metrics.json's core: final losses, cost (``started``: the job's ``perf_counter`` start),
    cell counts, batch category sizes and what was run."""
    datamodule, epoch_stats, identity = parts.datamodule, parts.epoch_stats, parts.identity
    final = {name: float(history[name].iloc[-1]) for name in FINAL_METRICS if name in history}
    encoding, train = datamodule.encoding, datamodule.split.train
    batch_cells = np.bincount(encoding.batch_codes[train], minlength=datamodule.n_batch)
    return {
        **final,
        LOSS_CHANGE: last_epoch_change(history[metric_names.ELBO_VALIDATION]),
        metric_names.EPOCHS: int(len(history)),
        metric_names.CELLS_SEEN: epoch_stats.cells_seen,
        metric_names.TRAIN_CELLS_PER_S: epoch_stats.cells_per_s,
        metric_names.TRAIN_TIME: epoch_stats.train_time_s,
        metric_names.WALL_TIME: time.perf_counter() - started,
        metric_names.PEAK_RSS: peak_rss_mb(),
        **datamodule.split.summary(),  # cell counts; data_subset: keep / max_cells
        metric_names.N_BATCH: datamodule.n_batch,
        **batch_category_sizes(batch_cells, encoding.batch_categories),
        metric_names.N_CATS_PER_COV: datamodule.n_cats_per_cov or [],
        metric_names.N_GENES: datamodule.n_vars,
        metric_names.STORE: str(parts.store),
        metric_names.JOB_NAME: identity["name"],
        metric_names.OVERRIDES: identity["overrides"],
        metric_names.CHOICES: identity["choices"],
    }
