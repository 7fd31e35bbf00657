"""Runs that survive a crash: a checkpoint every N epochs or N steps, resuming, a stop on NaN loss.

``<run folder>/checkpoints/last.ckpt`` is Lightning's full training state (weights, optimizer,
learning-rate schedule, epoch and step counters, so the KL warmup continues where it was) plus
what Lightning's checkpoint lacks: the per-epoch history so far (scvi-tools keeps it in an
in-memory logger), our epoch statistics and the RNG states. The loader's order depends only on
(seed, epoch), so a resumed run reads the same batches the uninterrupted run would have; a
checkpoint written in the middle of an epoch (:class:`StepCheckpoint`) also holds the training
loader's place in it (``EpochLoader.state_dict``), and the resumed loader leaves out the batches
trained before it. ``last.json`` beside it says where the checkpoint is: ``{"epoch": N, "step":
S, "batches": B}`` after N finished epochs, as history.csv counts them (Lightning's 0-based
counter stays inside the checkpoint), S optimizer steps in all and B batches of epoch N + 1
(0 at an epoch's end). Finding a run to continue is :mod:`sweep.training.resume`'s job.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pandas as pd
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric
from scvi.train._logger import SimpleLogger
from torchmetrics.utilities.data import dim_zero_sum

from sweep.metric_names import ELBO_VALIDATION
from sweep.run_folder import CHECKPOINT_FILE, checkpoint_file, write_checkpoint_info
from sweep.training.distributed import is_rank_zero
from sweep.training.rng import distributed_rank, rng_states_of_ranks, set_rng_state

log = logging.getLogger(__name__)


class EpochCheckpoint(EarlyStopping):
    """Writes ``run_dir/checkpoints/last.ckpt`` (and ``last.json``, sweep.run_folder) every
    ``every_n_epochs`` epochs, atomically (tmp + rename). ``history_of`` is the run's in-memory
    scvi-tools logger. (Other callbacks with a ``state_dict``, e.g. EpochStats, are saved and
    restored by Lightning itself.)

    Why an EarlyStopping that never stops (its checks are switched off below): Lightning runs a
    plain callback's ``on_train_epoch_end`` before the LightningModule's, which logs the epoch's
    training metrics, and that of its *monitoring* callbacks, instances of EarlyStopping or
    Checkpoint, after it; a checkpoint taken before would miss the epoch's metrics. Lightning's
    Checkpoint base class would say better what this is, but a Checkpoint needs
    ``enable_checkpointing=True``, with which scvi-tools adds its own SaveCheckpoint callback.
    """

    def __init__(self, run_dir: Path, every_n_epochs: int, history_of: SimpleLogger):
        super().__init__(monitor=ELBO_VALIDATION, check_on_train_epoch_end=False)
        self.run_dir = Path(run_dir)
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
        save_last(trainer, self.run_dir, epochs=epoch + 1, batches=0)

    def state_dict(self) -> dict:
        rng = rng_states_of_ranks()  # every DDP rank takes part (Lightning asks them all)
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
            "rng": rng[0],
            "rng_of_rank": rng,
        }

    def load_state_dict(self, state: dict) -> None:
        rank, world_size = distributed_rank()
        of_rank = state.get("rng_of_rank", [])  # not in checkpoints written before it was kept
        set_rng_state(of_rank[rank] if len(of_rank) == world_size else state["rng"])
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


def save_last(trainer, run_dir: Path, epochs: int, batches: int) -> None:
    """Write ``run_dir/checkpoints/last.ckpt`` atomically (tmp + rename) and its ``last.json``:
    ``epochs`` finished, ``batches`` of the next one trained. Every DDP rank takes part; rank 0
    writes. The whole training state (optimizer, callbacks, the training loader's place) is
    what resume needs; saying so also keeps Lightning from logging it."""
    last = checkpoint_file(run_dir)
    last.parent.mkdir(parents=True, exist_ok=True)
    partial = last.with_name(CHECKPOINT_FILE + ".partial")
    trainer.save_checkpoint(partial, weights_only=False)
    if not trainer.is_global_zero:
        return
    os.replace(partial, last)
    write_checkpoint_info(run_dir, epoch=epochs, step=trainer.global_step, batches=batches)


class StepCheckpoint(Callback):
    """Writes the run's checkpoint (as :class:`EpochCheckpoint`, into the same ``last.ckpt``)
    after every ``every_n_steps``-th optimizer step, in the middle of an epoch; 0: never. A
    SLURM requeue or a crash then loses at most ``every_n_steps`` steps.

    Not after an epoch's last batch: its validation and epoch-end hooks have not run yet, and
    Lightning would take a checkpoint written there for a finished epoch (the epoch checkpoint,
    when one is due, follows a moment later).

    Its state is what Lightning's checkpoint lacks in the middle of an epoch: the epoch's
    running sums of the training metrics logged per epoch (:func:`running_sums`; each DDP
    rank's own), added back at the first step of the resumed run, so the epoch's training means
    in history.csv are over all of its batches.
    """

    def __init__(self, run_dir: Path, every_n_steps: int):
        self.run_dir = Path(run_dir)
        self.every_n_steps = every_n_steps
        self._saved: dict = {}  # the running sums as the last checkpoint of this epoch took them
        self._resumed: dict = {}  # those of the checkpoint this run resumed from, until used

    @property
    def state_key(self) -> str:
        return "StepCheckpoint"

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._saved = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._resumed:
            resumed, self._resumed = self._resumed, {}
            if (resumed["epoch"], resumed["batches"]) == (trainer.current_epoch, batch_idx):
                add_running_sums(trainer, resumed["names"], resumed["values"])
        if self.every_n_steps <= 0 or trainer.global_step % self.every_n_steps:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        names, values = running_sums(trainer.fit_loop.epoch_loop._results)
        gathered = trainer.strategy.all_gather(values.to(trainer.strategy.root_device))
        self._saved = {
            "epoch": trainer.current_epoch,
            "batches": batch_idx + 1,
            "names": names,
            "values": gathered.cpu().reshape(trainer.world_size, len(names)),
        }
        save_last(trainer, self.run_dir, epochs=trainer.current_epoch, batches=batch_idx + 1)

    def state_dict(self) -> dict:
        return dict(self._saved)

    def load_state_dict(self, state: dict) -> None:
        self._resumed = dict(state)


def running_sums(results) -> tuple[list[list[str]], torch.Tensor]:
    """The running sums Lightning keeps in memory only (not in its checkpoints) for the epoch
    means of the metrics logged with ``on_epoch=True`` (``results``: the training loop's
    collection): ([result key, state name] each, (n,) float64 values). A mean is a weighted sum
    and its weight; a torchmetrics metric (scvi-tools' ELBO terms), its summed states."""
    names, values = [], []
    for key, result in results.items():
        if not isinstance(result, _ResultMetric) or not result.meta.on_epoch:
            continue
        if result.is_tensor:
            meta = result.meta
            states = ["value", "cumulated_batch_size"] if meta.is_mean_reduction else ["value"]
            if not (meta.is_mean_reduction or meta.is_sum_reduction):
                continue
            holder = result
        else:
            holder = result.value
            states = [n for n, reduce in holder._reductions.items() if reduce is dim_zero_sum]
        for state in states:
            value = getattr(holder, state)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                names.append([key, state])
                values.append(float(value))
    return names, torch.tensor(values, dtype=torch.float64)


def add_running_sums(trainer, names: list[list[str]], values: torch.Tensor) -> None:
    """Add the running sums of :func:`running_sums` (``values`` (world_size, n): each rank's)
    to this rank's, in the training loop's collection after the resumed run's first step."""
    if values.shape[0] != trainer.world_size:
        log.warning(
            "resumed on %d devices from a checkpoint of %d: this epoch's training means in "
            "history.csv are over the batches since the resume only",
            trainer.world_size,
            values.shape[0],
        )
        return
    results = trainer.fit_loop.epoch_loop._results
    for (key, state), value in zip(names, values[trainer.global_rank], strict=True):
        result = results.get(key)
        if not isinstance(result, _ResultMetric):
            continue
        holder = result if result.is_tensor else result.value
        current = getattr(holder, state)
        setattr(holder, state, current + value.to(current.dtype).to(current.device))


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
                f"training loss is {value} at epoch {trainer.current_epoch + 1}, batch {batch_idx} "
                f"(global step {trainer.global_step}): stopped. Lower plan.lr, or look for "
                "extreme counts in the data"
            )
