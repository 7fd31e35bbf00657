"""The training command: ``python train.py`` in a checkout, ``scvi-sweep-train`` once installed.

Both take the same arguments (``group=option ...``, ``-m`` for a multirun; groups in ``conf/``).
The command line is checked before Hydra composes or writes anything (unknown keys, values out of
range, secrets: one line, no run folder); each job is validated again before the heavy imports.
The Hydra job is named ``train`` whatever starts it, so its log is ``train.log`` in every run
folder. Each job returns its ``optimized_metric`` so sweepers can optimise it.
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweep.config import ConfigError, check_command_line, register_schema, validate
from sweep.paths import CONF_DIR
from sweep.quiet import quiet_known_harmless
from sweep.secret_overrides import SecretInOverride

register_schema()


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def train_job(cfg: DictConfig) -> float:
    """One Hydra job: validate, then :func:`sweep.train.run` in the job's output folder."""
    # Each job's one check (sweep.train trusts it), before the heavy imports. A single run's
    # config was checked already by RefuseBadConfig, before Hydra wrote its folder; the second
    # check stays because in a multirun that callback sees only the base config, not each job's
    # values (sweeps, an Optuna trial's parameters).
    validate(cfg)
    quiet_known_harmless()
    from sweep.train import run

    logging.getLogger("lightning").handlers.clear()  # it propagates to Hydra's handlers too
    return run(cfg, HydraConfig.get().runtime.output_dir)


def main() -> None:
    """Check the command line, then hand it to Hydra (``train_job`` per job)."""
    try:
        check_command_line(sys.argv[1:], CONF_DIR)  # unknown keys, values out of range: at once
    except (ConfigError, SecretInOverride) as error:
        sys.exit(f"Error: {error}")
    train_job()
