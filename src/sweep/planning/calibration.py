"""How fast a job trains: measured by a short run of the real model on the real loader, or given.

The calibration builds the job's datamodule (sweep.data.datamodule) and scVI model
(sweep.model.build) exactly as a job does, trains ``dry_run_calibration_steps`` steps on one
device of ``trainer.accelerator`` with scvi-tools' trainer (no logger files, no checkpoints, no
W&B, in a temporary folder), and times the steps after the first fifth (start-up, worker
launch and compilation left out), epoch changes included, for at most :data:`MAX_TIMED_S`
seconds; then it times a validation pass of up to :data:`VALIDATION_BATCHES` batches. The
result is cached as a JSON file per store, model, batch definition, loader, precision and
device under ``<cache folder>/calibration/`` (:func:`sweep.paths.cache_dir`), so a second plan
of the same jobs reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweep.paths import cache_dir
from sweep.planning.job_list import PlanError

log = logging.getLogger(__name__)

#: the cache folder's subfolder of calibrations, one JSON file per key
CALIBRATION_DIR = "calibration"
#: validation batches timed after the training steps
VALIDATION_BATCHES = 50
#: the training steps are timed for at most this many seconds (a CPU's steps are slow)
MAX_TIMED_S = 60


@dataclass
class Throughput:
    """Cells per second on one device: training (``train``: optimizer steps, loading included)
    and validation (``validation``: forward passes; None when not measured), and ``source``, in
    words: given, or calibrated (the cache file named; ``fresh``: by this plan)."""

    train: float
    validation: float | None
    source: str
    fresh: bool = False  # measured by this plan (not read from the cache)


def given(cells_per_s: float) -> Throughput:
    """The throughput the user gave.

    Parameters
    ----------
    cells_per_s
        ``dry_run_cells_per_s``: training cells/s of one device.

    Returns
    -------
    That rate for training; validation not measured (counted at the training rate).
    """
    return Throughput(float(cells_per_s), None, f"given: dry_run_cells_per_s={cells_per_s:,.0f}")


def device_name(accelerator: str) -> str:
    """The device a job would train on here, in words (the cache key's device).

    Parameters
    ----------
    accelerator
        ``trainer.accelerator``.

    Returns
    -------
    The GPU's name, or the CPU and the cores this process may use. Raises
    :class:`~sweep.planning.job_list.PlanError` for a GPU job on a machine without one.
    """
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise PlanError(
                f"trainer.accelerator={accelerator} but this machine has no GPU to calibrate on: "
                "run the dry run where the jobs will run, or give dry_run_cells_per_s=<training "
                "cells/s of one GPU> (the seed's T4: about 18000)"
            )
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return (
        f"cpu: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    )


def calibration_key(cfg: DictConfig, store: Path, device: str) -> dict:
    """What a calibration depends on.

    Parameters
    ----------
    cfg
        The job's config.
    store
        Its store folder.
    device
        :func:`device_name`.

    Returns
    -------
    The store (its path and manifest's digest), the model, the batch definition (the model's
    inputs), the loader (batch size, workers...), precision, batch injection, device and steps.
    """
    manifest = (Path(store) / "manifest.json").read_bytes()
    return {
        "store": str(Path(store).resolve()),
        "manifest_sha1": hashlib.sha1(manifest).hexdigest(),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "batch": OmegaConf.to_container(cfg.batch, resolve=True),
        "loader": OmegaConf.to_container(cfg.loader, resolve=True),
        "precision": str(cfg.trainer.precision),
        "batch_injection": cfg.trainer.get("batch_injection"),
        "device": device,
        "steps": int(cfg.dry_run_calibration_steps),
    }


def cache_path(key: dict) -> Path:
    """Where a calibration is cached.

    Parameters
    ----------
    key
        :func:`calibration_key`.

    Returns
    -------
    ``<cache folder>/calibration/<digest of the key>.json``.
    """
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / CALIBRATION_DIR / f"{digest}.json"


def throughput(cfg: DictConfig, store: Path) -> Throughput:
    """The job's throughput: ``dry_run_cells_per_s`` when given, else the cached calibration of
    its key, else a new calibration (:func:`measure`), cached.

    Parameters
    ----------
    cfg
        The job's composed config.
    store
        Its store folder.

    Returns
    -------
    Training and validation cells/s on one device, and where they come from.
    """
    if cfg.get("dry_run_cells_per_s") is not None:
        return given(cfg.dry_run_cells_per_s)
    device = device_name(str(cfg.trainer.accelerator))
    key = calibration_key(cfg, store, device)
    path = cache_path(key)
    fresh = not path.is_file()
    if fresh:
        model = cfg.model
        log.info(
            "calibrating on %s: up to %d training steps (%d s timed) of the model with %d hidden "
            "units, %d layers, %d latent dimensions",
            device,
            key["steps"],
            MAX_TIMED_S,
            model.n_hidden,
            model.n_layers,
            model.n_latent,
        )
        train, validation, timed = measure(cfg, store)
        record = {
            "train_cells_per_s": train,
            "validation_cells_per_s": validation,
            "steps_timed": timed,
            "measured_at": time.strftime("%Y-%m-%d %H:%M"),
            "key": key,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(record, indent=1))
        partial.replace(path)
    record = json.loads(path.read_text())
    return Throughput(
        record["train_cells_per_s"],
        record.get("validation_cells_per_s"),
        f"calibrated on {device}, {record.get('steps_timed', '?')} training steps timed "
        f"({record.get('measured_at', 'earlier')}; cached in {path})",
        fresh=fresh,
    )


class CellClock:
    """Cells and seconds of the training batches after the first ``skip`` (a CUDA device is
    synchronised at both ends, so queued kernels count)."""

    def __init__(self, skip: int):
        self.skip, self.batches, self.cells = skip, 0, 0
        self.started: float | None = None
        self.seconds = 0.0

    def tick(self, batch: dict, module) -> None:
        """One batch done: start the clock after ``skip`` of them, then count cells."""
        self.batches += 1
        if self.batches == self.skip:
            self.started = now(module)
        elif self.batches > self.skip:
            self.cells += batch_cells(batch)

    def stop(self, module) -> None:
        """Stop the clock (the seconds since it started)."""
        if self.started is not None:
            self.seconds = now(module) - self.started

    @property
    def rate(self) -> float | None:
        """Cells/s of the batches timed; None when none was."""
        return self.cells / self.seconds if self.cells and self.seconds > 0 else None


def batch_cells(batch: dict) -> int:
    """The cells of a batch (rows of its count matrix)."""
    from scvi import REGISTRY_KEYS

    return int(batch[REGISTRY_KEYS.X_KEY].shape[0])


def now(module) -> float:
    """``time.perf_counter()`` once the module's CUDA device (if any) has finished its work."""
    import torch

    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)
    return time.perf_counter()


def make_timer(skip: int):
    """A Lightning callback timing training batches after ``skip`` and every validation batch
    (its ``train``/``validation`` :class:`CellClock`)."""
    from lightning.pytorch import Callback

    class CalibrationTimer(Callback):
        def __init__(self):
            self.train, self.validation = CellClock(skip), CellClock(0)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.train.tick(batch, module)
            started = self.train.started
            if started is not None and time.perf_counter() - started > MAX_TIMED_S:
                trainer.should_stop = True  # enough: the steps so far are timed

        def on_train_end(self, trainer, module):
            self.train.stop(module)

        def on_validation_epoch_start(self, trainer, module):
            self.validation.started = now(module)

        def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, *_):
            self.validation.cells += batch_cells(batch)

        def on_validation_epoch_end(self, trainer, module):
            self.validation.stop(module)

    return CalibrationTimer()


@contextmanager
def quiet_lightning():
    """Lightning's INFO lines (seed, devices found, why fit stopped) held back while the
    calibration trains; its warnings still show. The levels are restored after."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def measure(cfg: DictConfig, store: Path) -> tuple[float, float | None, int]:
    """Time the job's model on its loader, on one device; nothing is written outside a
    temporary folder.

    Parameters
    ----------
    cfg
        The job's config: ``dry_run_calibration_steps`` training steps are run (fewer once
        :data:`MAX_TIMED_S` seconds are timed), then up to :data:`VALIDATION_BATCHES`
        validation batches.
    store
        Its store folder.

    Returns
    -------
    (training cells/s, validation cells/s or None, training steps timed).
    """
    from sweep.training.parts import data_and_model

    steps = int(cfg.dry_run_calibration_steps)
    with quiet_lightning():  # "Seed set to ..."
        datamodule, model = data_and_model(cfg, store)
    timer = make_timer(skip=max(1, steps // 5))
    accelerator = str(cfg.trainer.accelerator)
    with tempfile.TemporaryDirectory() as folder, quiet_lightning():
        model.train(
            datamodule=datamodule,
            max_epochs=steps,  # max_steps ends it first: an epoch has at least one step
            max_steps=steps,
            accelerator=accelerator,
            devices=1,
            precision=cfg.trainer.precision,
            plan_kwargs=OmegaConf.to_container(cfg.plan, resolve=True),
            early_stopping=False,
            callbacks=[timer],
            enable_progress_bar=False,
            default_root_dir=folder,
            limit_val_batches=VALIDATION_BATCHES,
        )
        model.trainer.validate(model.trainer.lightning_module, datamodule=datamodule, verbose=False)
    if timer.train.rate is None:
        raise PlanError(
            f"dry_run_calibration_steps={steps} timed no training step: raise it (e.g. 200)"
        )
    timed = timer.train.batches - timer.train.skip
    return timer.train.rate, timer.validation.rate, timed
