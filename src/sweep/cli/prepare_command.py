"""CLI: many source h5ad files -> one prepared store folder (logic in :mod:`sweep.data.prepare`).

``scvi-sweep-prepare source='/data/*.h5ad' output=/ssd/store genes=/data/genes.tsv``
(keys, defaults and meanings: :class:`sweep.config.schema.PrepareConfig`, printed by ``--help``;
Hydra's settings: ``conf/prepare.yaml``).

The command line is checked before Hydra starts or any folder is made, with prepare's own checks
(:mod:`sweep.data.prepare.config` and ``.output``): an unknown key (with the nearest one), a
missing ``source`` or ``output``, a glob that matches nothing, a gene list that is not a file,
an output folder holding other files. A mistake is one line and exit status 1
(:mod:`sweep.cli.errors`), and so is one that prepare finds in the sources themselves.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from sweep.cli.errors import UsageError, refusing
from sweep.cli.help_text import prepare_help, wants_help
from sweep.config.schema import PrepareConfig
from sweep.paths import CONF_DIR

# the schema heads prepare.yaml's defaults list: ill-typed or unknown keys fail at compose time
ConfigStore.instance().store(name="prepare_schema", node=PrepareConfig)

KEYS = tuple(f.name for f in dataclasses.fields(PrepareConfig))
EXAMPLE = "scvi-sweep-prepare source='/data/*.h5ad' output=/ssd/store"


def check_keys(overrides: list[str]) -> None:
    """Refuse an override whose key is not one of prepare's (``hydra.*`` and Hydra's groups
    aside): the nearest key named, or the training command when the key is one of its."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from sweep.config.schema import schema_keys

    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key in KEYS or key.split(".")[0] == "hydra" or key.startswith("hydra/"):
            continue
        near = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.6)
        if near:
            hint = f"did you mean {near[0]}?"
        elif key.split(".")[0] in schema_keys() or key in schema_keys():
            hint = f"{key} is a training key (python train.py ...), not one of prepare's"
        else:
            hint = "prepare's keys are listed by `scvi-sweep-prepare --help`"
        raise UsageError(f"unknown prepare key {key}: {hint}")


def composed(overrides: list[str]) -> DictConfig:
    """``conf/prepare.yaml`` with the command line's overrides, as Hydra will compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sweep.cli.train_checks import composition_error

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("prepare", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise UsageError(composition_error(error)) from error


def check_required(cfg: DictConfig) -> None:
    """Refuse a config without ``source`` or ``output`` (``???`` in the schema)."""
    from omegaconf import OmegaConf

    required = {
        "source": "the source h5ad files (a quoted glob)",
        "output": "the store folder to write",
    }
    for key, what in required.items():
        if OmegaConf.is_missing(cfg, key):
            raise UsageError(f"{key}= is missing: give {what}, as in {EXAMPLE}")


def check_prepare(cfg: DictConfig) -> None:
    """Prepare's checks of its config, its sources and its output folder, before any folder is
    made (:func:`~sweep.data.prepare.config.resolve_config`, ``resolve_sources``,
    :func:`~sweep.data.prepare.output.check_output_folder`); they raise ``PrepareError``."""
    from sweep.data.prepare.config import resolve_config, resolve_sources
    from sweep.data.prepare.output import check_output_folder

    resolved = resolve_config(cfg)
    resolve_sources(resolved.source)
    out = Path(resolved.output).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} is a file: give a folder (new, empty, or a store)")
    check_output_folder(out)


def check_command_line(argv: list[str]) -> None:
    """Every check of a ``scvi-sweep-prepare`` command line that needs no source's content, each
    mistake refused in one line: the keys, then (unless Hydra is only asked to print: ``--cfg``,
    ``--info``, ``--hydra-help``; or sweeps: ``-m``) the composed config, the sources and the
    output folder (the data modules are imported only for these)."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_known_args(argv)[0]
    with refusing():
        check_keys(args.overrides)
        if args.cfg or args.info or args.hydra_help or args.shell_completion or args.multirun:
            return
        cfg = composed(args.overrides)
        check_required(cfg)
    from sweep.data.prepare.config import PrepareError

    with refusing(PrepareError):
        check_prepare(cfg)


@hydra.main(config_path=str(CONF_DIR), config_name="prepare", version_base="1.3")
def prepare_job(cfg: DictConfig) -> None:
    """Hydra's job: :func:`sweep.data.prepare.prepare_store`; a bad source, gene list or output
    store refused in one line."""
    from sweep.data.prepare import PrepareError, prepare_store
    from sweep.data.store import StoreError

    with refusing(PrepareError, StoreError):
        prepare_store(cfg)


def main() -> None:
    """Print the help (``--help``), or check the command line, then hand it to Hydra."""
    if wants_help(sys.argv[1:]):
        print(prepare_help())
        return
    check_command_line(sys.argv[1:])
    prepare_job()


if __name__ == "__main__":
    main()
