"""The run folder's format: what a training job writes into its Hydra output folder, and reading
it back. Training (sweep.training: the job, checkpoints, tracking) writes through this module;
resuming (sweep.training.resume) and the reports (sweep.report) read through it. The names of
the metrics and columns inside its files are sweep.metric_names'.

A run folder (``hydra.run.dir``, or ``<sweep folder>/<job number>`` in a multirun)::

    .hydra/overrides.yaml     Hydra: the job's task overrides, as on the command line
    .hydra/hydra.yaml         Hydra: its config, with the group choices (runtime.choices)
    train.log                 Hydra's job log (``<hydra.job.name>.log``, named in train.yaml)
    config_resolved.yaml      the job's config, interpolations resolved
    history.csv               one row per finished epoch (EPOCH 1, 2, ...): losses, KL weight,
                              GLOBAL_STEP and CELLS_SEEN at its end, ...
    steps.csv                 one row per step-level validation (``trainer.validate_every_n_steps``,
                              sweep.training.step_evaluation): GLOBAL_STEP, EPOCH (fractional),
                              CELLS_SEEN, the validation losses on a fixed subsample, KL weight, lr
    integration.csv           one row per scoring (evaluated epochs, and every
                              ``evaluation.every_n_steps`` steps): every integration score
    embedding.csv, .png       the evaluation cells' UMAP layouts (sweep.evaluation.embedding) and
                              their picture (sweep.report.embedding)
    metrics.json              written last: final metrics, cost, what was run; a run that has it
                              finished
    report.md, curves.png     the run's page, written after metrics.json (sweep.report.run_report)
    model/                    scvi-tools' saved model (``save_model=true``)
    checkpoints/last.ckpt     the training state every N epochs or steps (sweep.training.checkpoint)
    checkpoints/last.json     which epoch, step and batch of the next epoch last.ckpt holds
    wandb/, wandb_run.json    the W&B run's files, and its id, name and group
                              (sweep.training.tracking)

No heavy imports at module level: the command line's checks read it before Hydra starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    import pandas as pd

# --- file names --------------------------------------------------------------------------------

HYDRA_DIR = ".hydra"
OVERRIDES_FILE = f"{HYDRA_DIR}/overrides.yaml"
HYDRA_FILE = f"{HYDRA_DIR}/hydra.yaml"
LOG_FILE = "train.log"
#: every log of a run folder: train.log, and the W&B logs of ``wandb/``
LOG_FILES = "*.log"
CONFIG_FILE = "config_resolved.yaml"
HISTORY_FILE = "history.csv"
STEPS_FILE = "steps.csv"
INTEGRATION_FILE = "integration.csv"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "last.ckpt"
CHECKPOINT_INFO_FILE = "last.json"
WANDB_DIR = "wandb"
WANDB_RECORD_FILE = "wandb_run.json"
#: Lightning's DDP launcher under Hydra: a folder per started process (its config)
DDP_HYDRA_DIRS = ".pl_ddp_hydra_*"
#: the run's page and its figures (sweep.report.run_report); report.md is also the name of a
#: multirun or study report in its report folder
REPORT_FILE, CURVES_FIGURE = "report.md", "curves.png"
#: the evaluation cells' 2-D layouts (sweep.evaluation.embedding) and their picture
EMBEDDING_TABLE, EMBEDDING_FIGURE = "embedding.csv", "embedding.png"

# --- reading and writing -----------------------------------------------------------------------


def read_yaml(path: Path):
    """A YAML file's content, or None when it does not exist."""
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def read_overrides(run_dir: Path) -> list[str] | None:
    """The task overrides that made ``run_dir`` (``.hydra/overrides.yaml``); None if unknown."""
    path = Path(run_dir) / OVERRIDES_FILE
    if not path.is_file():
        return None
    return [str(o) for o in yaml.safe_load(path.read_text()) or []]


def read_hydra_choices(run_dir: Path) -> dict[str, str]:
    """Config group -> option of the job (Hydra's own groups and unset groups left out), from
    ``.hydra/hydra.yaml``; {} without it."""
    hydra = read_yaml(Path(run_dir) / HYDRA_FILE) or {}
    choices = hydra.get("hydra", {}).get("runtime", {}).get("choices", {})
    return {k: v for k, v in choices.items() if v is not None and not k.startswith("hydra/")}


def write_config(run_dir: Path, cfg) -> None:
    """``config_resolved.yaml``: the job's config with interpolations resolved."""
    from omegaconf import OmegaConf

    (Path(run_dir) / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))


def write_metrics(run_dir: Path, metrics: dict) -> None:
    """``metrics.json``: the job's last file; a run folder that has it finished."""
    (Path(run_dir) / METRICS_FILE).write_text(json.dumps(metrics, indent=1))


def read_metrics(run_dir: Path) -> dict | None:
    """``metrics.json``, or None when the run has not finished."""
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_table(run_dir: Path, name: str, table: pd.DataFrame) -> None:
    """A table of the run (:data:`HISTORY_FILE`, :data:`STEPS_FILE`, :data:`INTEGRATION_FILE`)
    as CSV, no index."""
    table.to_csv(Path(run_dir) / name, index=False)


def read_table(run_dir: Path, name: str) -> pd.DataFrame | None:
    """A table written by :func:`write_table`, or None when there is none."""
    import pandas as pd

    path = Path(run_dir) / name
    return pd.read_csv(path) if path.is_file() else None


def checkpoint_file(run_dir: Path) -> Path:
    """``checkpoints/last.ckpt`` of ``run_dir`` (whether or not it exists)."""
    return Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE


def write_checkpoint_info(run_dir: Path, epoch: int, step: int, batches: int = 0) -> None:
    """``checkpoints/last.json``: the finished epochs (from 1), optimizer steps and batches of
    the next epoch trained (0 at an epoch's end) of last.ckpt."""
    path = Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_INFO_FILE
    partial = path.with_name(CHECKPOINT_INFO_FILE + ".partial")
    partial.write_text(json.dumps({"epoch": epoch, "step": step, "batches": batches}))
    os.replace(partial, path)  # whole for a reader at any moment (a watcher, a requeue)


def read_checkpoint_info(run_dir: Path) -> dict:
    """``checkpoints/last.json``: ``{"epoch": N, "step": S, "batches": B}`` (B is 0 in files
    written before mid-epoch checkpoints)."""
    info = json.loads((Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_INFO_FILE).read_text())
    return {"batches": 0} | info


def write_wandb_record(run_dir: Path, record: dict) -> None:
    """``wandb_run.json``: the job's W&B run (id, name, group, ...)."""
    (Path(run_dir) / WANDB_RECORD_FILE).write_text(json.dumps(record, indent=1))


def read_wandb_record(run_dir: Path) -> dict | None:
    """``wandb_run.json``, or None when the job had no W&B run."""
    path = Path(run_dir) / WANDB_RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None
