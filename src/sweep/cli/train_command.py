"""The training command: ``python train.py`` in a checkout, ``scvi-sweep-train`` once installed.

Both take the same arguments (``group=option ...``, ``-m`` for a multirun; groups in ``conf/``).
The command line is checked before Hydra composes or writes anything (unknown keys, values out of
range, secrets: one line, no run folder); each job is validated again before the heavy imports.
The Hydra job is named ``train`` whatever starts it, so its log is ``train.log`` in every run
folder. Each job returns its ``optimized_metric`` so sweepers can optimise it.
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweep.config.overrides import SecretInOverride, check_overrides_against_schema, refuse_secrets
from sweep.config.schema import ConfigError, register_schema, validate
from sweep.paths import CONF_DIR
from sweep.training.quiet import quiet_known_harmless

register_schema()


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def train_job(cfg: DictConfig) -> float:
    """One Hydra job: validate, then :func:`sweep.training.job.run` in the job's output folder,
    which ends with the run's page (sweep.report.run_report)."""
    # Each job's one check (sweep.training trusts it), before the heavy imports. A single run's
    # config was checked already by RefuseBadConfig, before Hydra wrote its folder; the second
    # check stays because in a multirun that callback sees only the base config, not each job's
    # values (sweeps, an Optuna trial's parameters).
    validate(cfg)
    quiet_known_harmless()
    from sweep.report.run_report import write_run_report
    from sweep.training.job import run

    logging.getLogger("lightning").handlers.clear()  # it propagates to Hydra's handlers too
    return run(cfg, HydraConfig.get().runtime.output_dir, write_page=write_run_report)


def check_command_line(argv: list[str], conf_dir: Path) -> None:
    """Check the overrides of a ``train.py`` command line (flags such as ``-m`` or ``--cfg job``
    aside) before Hydra composes or writes anything: first for secrets (raising
    ``SecretInOverride``, :func:`~sweep.config.overrides.refuse_secrets`), then against the
    schema (raising ``ConfigError``); the config groups are the folders of ``conf_dir``."""
    from hydra._internal.utils import get_args_parser

    overrides = get_args_parser().parse_known_args(argv)[0].overrides
    refuse_secrets(overrides)
    groups = {folder.name for folder in Path(conf_dir).iterdir() if folder.is_dir()}
    check_overrides_against_schema(overrides, groups)


def main() -> None:
    """Check the command line, then hand it to Hydra (``train_job`` per job)."""
    try:
        check_command_line(sys.argv[1:], CONF_DIR)  # unknown keys, values out of range: at once
    except (ConfigError, SecretInOverride) as error:
        sys.exit(f"Error: {error}")
    train_job()
