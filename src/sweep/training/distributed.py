"""One job on several devices (Lightning DDP): which process writes, and which launches work.

Lightning starts the extra DDP processes of a plain run itself, by re-running the command line
(under Hydra: the same ``train.py`` overrides into the same run folder). Inside a Hydra multirun
that would start the whole sweep again in every process, so there the processes must come from
the launcher instead: ``hydra/launcher=slurm_ddp`` (conf/hydra/launcher/slurm_ddp.yaml: one SLURM
task per device), where Lightning finds them through SLURM's environment.
"""

from __future__ import annotations

from lightning.fabric.plugins.environments import (
    LSFEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.utilities import rank_zero_only

from sweep.config.schema import named_device_count


def is_rank_zero() -> bool:
    """True in the process that writes the run folder (the only one without DDP)."""
    return rank_zero_only.rank == 0


def several_devices(devices) -> bool:
    """Whether Lightning's ``devices`` (an int, "2", "0,1", "auto", -1 or a list) may mean more
    than one device ("auto" and -1 do on a machine with several)."""
    count = named_device_count(devices)
    return count is None or count > 1


def in_multirun() -> bool:
    """Whether this job is one of a Hydra multirun's."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_launch(trainer_cfg) -> None:
    """Refuse DDP (``trainer_cfg``: the ``trainer`` group) inside a multirun unless a cluster
    launcher started this job's processes."""
    ddp = str(trainer_cfg.strategy).startswith("ddp") and several_devices(trainer_cfg.devices)
    launched = any(
        env.detect() for env in (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment)
    )
    if ddp and not launched and in_multirun():
        raise ValueError(
            f"trainer.strategy={trainer_cfg.strategy} on {trainer_cfg.devices} devices inside a "
            "multirun (-m): Lightning would start every DDP process by re-running the whole "
            "sweep. Either run the job alone (python train.py trainer=ddp ...), or give each job "
            "its processes from the launcher: hydra/launcher=slurm_ddp (SLURM, one task per "
            "device)"
        )
