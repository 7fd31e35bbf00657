"""The training command: ``python train.py`` in a checkout, ``scvi-sweep-train`` once installed.

Both take the same arguments (``group=option ...``, ``-m`` for a multirun; groups in ``conf/``;
``--help``: our own text, sweep.cli.help_text). The command line is checked before Hydra starts
or anything is written, without torch (sweep.cli.train_checks): unknown keys, values out of
range, secrets, group options that do not exist, a config that does not compose, and each job's
store (its path, format version and ``data.keep`` values, from its manifest); a mistake is one
line and exit status 1 (sweep.cli.errors). Each job is validated again before the heavy imports.
The Hydra job is named ``train`` whatever starts it, so its log is ``train.log`` in every run
folder. Each job returns its ``optimized_metric`` so sweepers can optimise it. With
``dry_run=true`` the command prints the plan of its jobs (sweep.planning) and Hydra starts none.
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweep.cli.errors import refuse, refusing
from sweep.cli.help_text import train_help, wants_help
from sweep.cli.train_checks import (
    check_group_options,
    check_jobs,
    config_groups,
    refuse_sweeps_without_multirun,
)
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
    if cfg.dry_run:  # the command line's dry_run=true never reaches Hydra (main)
        raise ConfigError(
            "dry_run=true reached a job: give it on the command line (python train.py ... "
            "dry_run=true), where it plans the jobs and starts none"
        )
    quiet_known_harmless()
    from sweep.report.run_report import write_run_report
    from sweep.training.job import run

    logging.getLogger("lightning").handlers.clear()  # it propagates to Hydra's handlers too
    return run(cfg, HydraConfig.get().runtime.output_dir, write_page=write_run_report)


def check_command_line(argv: list[str], conf_dir: Path) -> None:
    """Check the overrides of a ``train.py`` command line (flags such as ``-m`` or ``--cfg job``
    aside) before Hydra composes or writes anything: first for secrets (raising
    ``SecretInOverride``, :func:`~sweep.config.overrides.refuse_secrets`), then against the
    schema (raising ``ConfigError``; the config groups are the folders of ``conf_dir`` and of a
    ``--config-dir``), then each group option against the group's options there (raising
    ``UsageError``, :func:`~sweep.cli.train_checks.check_group_options`)."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_known_args(argv)[0]
    overrides = args.overrides
    refuse_secrets(overrides)
    # ``--config-dir DIR`` adds DIR's groups and options to the project's
    extra = Path(args.config_dir).resolve() if args.config_dir else None
    folders = [Path(conf_dir), *([extra] if extra is not None and extra.is_dir() else [])]
    groups = {g.name for f in folders if f.is_dir() for g in f.iterdir() if g.is_dir()}
    check_overrides_against_schema(overrides, groups)
    if any(override.lstrip("+~").startswith("hydra.searchpath") for override in overrides):
        return  # options from elsewhere: Hydra itself names one it cannot find
    options = config_groups(conf_dir)
    for folder in folders[1:]:
        for group, names in config_groups(folder).items():
            options[group] = sorted({*options.get(group, []), *names})
    check_group_options(overrides, options, conf_dir)


def check_jobs_of(argv: list[str], conf_dir: Path) -> None:
    """The checks that compose the config (:func:`~sweep.cli.train_checks.check_jobs`: each
    job's store and ``data.keep``) and a sweep given without ``-m``; skipped where Hydra only
    prints (``--cfg``, ``--info``, ``--hydra-help``) or another config is named."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_known_args(argv)[0]
    if args.cfg or args.info or args.hydra_help or args.shell_completion:
        return
    if args.config_name or args.config_path or args.config_dir:
        return
    multirun = check_jobs(args.overrides, conf_dir)
    refuse_sweeps_without_multirun(args.overrides, bool(args.multirun) or multirun)


def dry_run_request(argv: list[str]) -> tuple[list[str], bool] | None:
    """(overrides, whether ``-m`` was given) when the command line asks for a plan
    (``dry_run=true``, also swept: the planner refuses that), else None; ``--cfg``, ``--help``
    and ``--info`` go to Hydra as they are."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = get_args_parser().parse_known_args(argv)[0]
    if args.cfg or args.help or args.hydra_help or args.info or args.shell_completion:
        return None
    for override in OverridesParser.create().parse_overrides(args.overrides):
        if override.get_key_element().lstrip("+~") == "dry_run" and override.value() is not False:
            return list(args.overrides), bool(args.multirun)
    return None


def print_plan(overrides: list[str], multirun: bool) -> None:
    """Print the plan of the command line's jobs (sweep.planning); start nothing."""
    from sweep.planning.cost import make_plan
    from sweep.planning.job_list import PlanError
    from sweep.planning.printout import plan_text

    quiet_known_harmless()
    planning = logging.getLogger("sweep.planning")  # says when it calibrates (on stderr)
    planning.addHandler(logging.StreamHandler())
    planning.setLevel(logging.INFO)
    try:
        plan = make_plan(overrides, multirun)
    except (ConfigError, PlanError, ValueError, OSError) as error:
        refuse(error)
    print(plan_text(plan))


def main() -> None:
    """Print the help (``--help``), or check the command line, then plan its jobs
    (``dry_run=true``) or hand it to Hydra (``train_job`` per job)."""
    if wants_help(sys.argv[1:]):
        print(train_help(CONF_DIR))
        return
    with refusing(ConfigError, SecretInOverride):
        check_command_line(sys.argv[1:], CONF_DIR)  # unknown keys, values out of range: at once
        check_jobs_of(sys.argv[1:], CONF_DIR)  # the composed config, each job's store
    request = dry_run_request(sys.argv[1:])
    if request is not None:
        print_plan(*request)
        return
    train_job()
