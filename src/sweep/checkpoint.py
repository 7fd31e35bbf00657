"""Runs that survive a crash: a checkpoint every N epochs, resuming, and a stop on NaN loss.

``<run folder>/checkpoints/last.ckpt`` is Lightning's full training state (weights, optimizer,
learning-rate schedule, epoch and step counters, so the KL warmup continues where it was) plus
what Lightning's checkpoint lacks: the per-epoch history so far (scvi-tools keeps it in an
in-memory logger), our epoch statistics and the RNG states. The loader's order depends only on
(seed, epoch), so a resumed run reads the same batches the uninterrupted run would have.
``last.json`` beside it says which epoch the checkpoint holds.

``resume=true`` re-runs a command into the newest *incomplete* run folder (a checkpoint, no
``metrics.json``) made by the same overrides: among the siblings of this job's folder
(``outputs/<task>/runs/*`` for single runs, ``outputs/<task>/multiruns/*/*`` for sweep jobs).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping
from scvi.train._logger import SimpleLogger

from sweep.distributed import is_rank_zero

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
LAST_INFO = "last.json"
#: the override that asks for resuming; left out when matching a run folder's overrides
RESUME_KEY = "resume"


class EpochCheckpoint(EarlyStopping):
    """Writes ``folder/last.ckpt`` every ``every_n_epochs`` epochs, atomically (tmp + rename).

    It subclasses EarlyStopping only to be called where Lightning calls monitoring callbacks:
    after the LightningModule's epoch-end hook, once the epoch's training metrics exist. It never
    stops training. ``history_of`` is the run's in-memory scvi-tools logger. (Other callbacks
    with a ``state_dict``, e.g. EpochStats, are saved and restored by Lightning itself.)
    """

    def __init__(self, folder: Path, every_n_epochs: int, history_of: SimpleLogger):
        super().__init__(monitor="elbo_validation", check_on_train_epoch_end=False)
        self.folder = Path(folder)
        self.every_n_epochs = every_n_epochs
        self.history_logger = history_of
        self._pending_epoch = -1
        self._pending_metrics: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return "EpochCheckpoint"

    # EarlyStopping's own checks are switched off: this callback never stops a run
    def on_validation_end(self, trainer, pl_module) -> None:
        pass

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if self.every_n_epochs <= 0 or (epoch + 1) % self.every_n_epochs:
            return
        # this epoch's epoch-level metrics reach the logger only after this hook: take them here
        logged = trainer.callback_metrics  # a collective under DDP: every rank asks
        if trainer.is_global_zero:  # DDP ranks > 0 keep no history
            self._pending_epoch = epoch
            self._pending_metrics = epoch_metrics(logged, self.history_logger)
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / (LAST + ".partial")
        trainer.save_checkpoint(partial)  # every DDP rank takes part; rank 0 writes
        if not trainer.is_global_zero:
            return
        os.replace(partial, self.folder / LAST)
        (self.folder / LAST_INFO).write_text(
            json.dumps({"epoch": epoch, "step": trainer.global_step})
        )

    def state_dict(self) -> dict:
        if not is_rank_zero():  # DDP ranks > 0 keep no history; rank 0's checkpoint is the one
            return {}
        history = {
            name: frame
            for name, frame in self.history_logger.experiment.data.items()
            if frame.index.name == "epoch"
        }
        return {
            "history": {
                name: {int(e): float(v) for e, v in frame.iloc[:, 0].items()}
                for name, frame in history.items()
            },
            "epoch": self._pending_epoch,
            "epoch_metrics": self._pending_metrics,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(state["rng"])
        if not is_rank_zero():
            return
        data = self.history_logger.experiment.data
        for name, values in state["history"].items():
            frame = pd.DataFrame({name: pd.Series(values, dtype=float)})
            frame.index.name = "epoch"
            data[name] = frame
        epoch = state["epoch"]
        for name, value in state["epoch_metrics"].items():  # the checkpointed epoch's last metrics
            if name not in data:
                data[name] = pd.DataFrame(columns=[name])
                data[name].index.name = "epoch"
            if data[name].index.name == "epoch" and epoch not in data[name].index:
                data[name].loc[epoch, name] = value


def rng_state() -> dict:
    """torch's, numpy's and Python's global RNG states, in types ``torch.load(weights_only=True)``
    accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def epoch_metrics(logged: dict, history_logger: SimpleLogger) -> dict[str, float]:
    """The epoch-level metrics of ``logged`` (``trainer.callback_metrics``): those the logger
    does not keep per step."""
    per_step = {
        name for name, frame in history_logger.experiment.data.items() if frame.index.name == "step"
    }
    return {
        name: float(value)
        for name, value in logged.items()
        if value.numel() == 1 and name not in per_step and not name.endswith("_step")
    }


class StopOnNonFiniteLoss(Callback):
    """Raises at the first training step whose loss is NaN or infinite, naming epoch and step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"training loss is {value} at epoch {trainer.current_epoch}, batch {batch_idx} "
                f"(global step {trainer.global_step}): stopped. Lower plan.lr, or look for "
                "extreme counts in the data"
            )


def last_checkpoint(run_dir: Path) -> Path | None:
    """The run folder's checkpoint if it has one and did not finish (no metrics.json)."""
    path = Path(run_dir) / CHECKPOINT_DIR / LAST
    return path if path.is_file() and not (Path(run_dir) / "metrics.json").is_file() else None


def _task_overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    return sorted(o for o in yaml.safe_load(path.read_text()) or [] if not _is_resume(o))


def _is_resume(override: str) -> bool:
    return override.lstrip("+~").split("=", 1)[0] == RESUME_KEY


def find_incomplete_run(run_dir: Path, overrides: list[str], multirun: bool) -> Path | None:
    """The newest incomplete run folder made with ``overrides`` (``resume`` aside), or None.

    Candidates: ``run_dir`` itself, then its siblings (single runs: ``runs/*``; sweep jobs: every
    job folder of every sweep, ``multiruns/*/*``), newest checkpoint first.
    """
    run_dir = Path(run_dir)
    wanted = sorted(o for o in overrides if not _is_resume(o))
    pattern = "*/*" if multirun else "*"
    root = run_dir.parent.parent if multirun else run_dir.parent
    candidates = [run_dir, *root.glob(pattern)]
    found = [
        c for c in candidates if last_checkpoint(c) is not None and _task_overrides(c) == wanted
    ]
    if not found:
        return None
    return max(found, key=lambda c: (c / CHECKPOINT_DIR / LAST).stat().st_mtime)


def resume_point(cfg, run_dir: Path) -> tuple[Path, Path | None]:
    """(the run folder to write, the checkpoint to continue from or None) for this job.

    Without ``resume``, a checkpoint left in ``run_dir`` itself is ignored (the run starts over).
    Outside Hydra only ``run_dir`` itself is looked at.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    run_dir = Path(run_dir)
    if not cfg.resume:
        if last_checkpoint(run_dir):
            log.warning(
                "%s holds an unfinished run; starting over (resume=true continues it)", run_dir
            )
        return run_dir, None
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        found = find_incomplete_run(
            run_dir, list(hc.overrides.task), multirun=hc.mode == RunMode.MULTIRUN
        )
    else:
        found = run_dir if last_checkpoint(run_dir) else None
    if found is None:
        log.warning(
            "resume=true: no unfinished run of these overrides near %s; starting anew", run_dir
        )
        return run_dir, None
    info = json.loads((found / CHECKPOINT_DIR / LAST_INFO).read_text())
    log.info("resuming %s after epoch %d (step %d)", found, info["epoch"], info["step"])
    return found, found / CHECKPOINT_DIR / LAST
