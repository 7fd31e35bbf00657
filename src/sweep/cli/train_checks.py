"""The training command line's checks that need ``conf/`` or the store, made before Hydra starts
(no run folder, no torch): a group option that does not exist (with the nearest one), a sweep
given without ``-m``, a config that does not compose, and every job's store: its path, its
format version and the ``data.keep`` values, from its manifest alone.

A sweep's jobs are checked by their distinct store settings: the values of the ``dataset`` and
``data`` overrides (and of ``experiment`` and ``hparams_search``, which may set them), usually
one; each is composed once (a fraction of a second). A job's own checks stay (the datamodule
checks every shard, Optuna's drawn values are validated by the job).
"""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType

from sweep.cli.errors import UsageError

#: override keys whose values can change a job's store or its ``data.keep`` (and the groups
#: that can set those keys)
STORE_KEYS = ("dataset", "data", "experiment", "hparams_search")
#: at most this many distinct store settings of a sweep are composed here; the jobs check the rest
MAX_VARIANTS = 64


def config_groups(conf_dir: Path) -> dict[str, list[str]]:
    """Every config group -> its options, sorted: the folders of ``conf_dir`` and Hydra's own
    groups (``hydra/launcher``, ``hydra/sweeper``...) with the options its plugins add, read at
    run time (a few hundredths of a second)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def collect(loader) -> dict[str, list[str]]:
        found, parents = {}, [""]
        while parents:
            parent = parents.pop()
            for name in loader.list_groups(parent):
                group = f"{parent}/{name}" if parent else name
                found[group] = sorted(loader.get_group_options(group))
                parents.append(group)
        return dict(sorted(found.items()))

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its own config loader
        return collect(GlobalHydra.instance().config_loader())
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return collect(GlobalHydra.instance().config_loader())


def string_values(override: Override) -> list[str] | None:
    """The values an override gives, as override strings (one, or each of a choice or range
    sweep); None for what cannot be listed without Hydra's sweeper (``interval(...)``,
    ``glob(...)``)."""
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    if override.value_type in (ValueType.INTERVAL_SWEEP, ValueType.GLOB_CHOICE_SWEEP):
        return None
    return list(override.sweep_string_iterator())


def option_values(override: Override) -> list[str]:
    """The options a group override names: ``model=a``, ``model=[a,b]`` (several options of one
    group), ``model=a,b`` (a sweep); ``null`` deselects and is left out."""
    if override.is_sweep_override():
        return string_values(override) or []
    value = override.value()
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if v is not None]


def check_group_options(overrides: list[str], groups: dict[str, list[str]], conf_dir: Path):
    """Refuse an override that chooses an option its config group does not have (``model=czi128``):
    the nearest option and every option of the group named.

    ``groups``: :func:`config_groups`; ``conf_dir``: the folder the message points at.
    """
    for override in OverridesParser.create().parse_overrides(overrides):
        group = override.key_or_group
        if group not in groups or override.is_delete():
            continue
        options = groups[group]
        for value in option_values(override):
            if value in options or value == "null":
                continue
            near = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
            hint = f"did you mean {group}={near[0]}? " if near else ""
            where = f" (conf/{group}/)" if (Path(conf_dir) / group).is_dir() else ""
            raise UsageError(
                f"{group}={value}: the config group {group}{where} has no option {value!r}; "
                f"{hint}its options: {', '.join(options)}"
            )


def refuse_sweeps_without_multirun(overrides: list[str], multirun: bool) -> None:
    """A sweep (``seed=0,1,2``, ``choice(...)``, ``range(...)``) needs ``-m`` (or a config that
    sets ``hydra.mode: MULTIRUN``, as the experiments do: ``multirun``): say so in one line
    instead of Hydra's four."""
    if multirun:
        return
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            raise UsageError(
                f"{override.input_line} gives several values, a sweep: add -m to run one job per "
                f"value, or give one value (a list is [a,b]; a string with commas is quoted: "
                f"{override.key_or_group}='\"a,b\"')"
            )


def store_variants(overrides: list[str]) -> list[list[str]]:
    """The distinct override lists a sweep's jobs compose to as far as their store and
    ``data.keep`` go: every override that is not a sweep, and each combination of the values of
    the swept :data:`STORE_KEYS` overrides (other sweeps left out). At most
    :data:`MAX_VARIANTS`."""
    fixed, swept = [], []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if not override.is_sweep_override():
            fixed.append(override.input_line)
        elif key.split(".")[0] in STORE_KEYS and (values := string_values(override)):
            swept.append([f"{override.get_key_element()}={value}" for value in values])
    combinations = itertools.islice(itertools.product(*swept), MAX_VARIANTS)
    return [fixed + list(combination) for combination in combinations]


def composition_error(error: Exception) -> str:
    """A Hydra or OmegaConf composition error in one sentence: its message and its cause's first
    line (``override model.n_hidden=abc: Value 'abc' ... converted to Integer``)."""
    cause = error.__cause__
    first = str(cause).strip().splitlines()[0] if cause and str(cause).strip() else ""
    message = str(error).removeprefix("Error merging override ")
    if message != str(error):
        message = f"override {message}"
    return f"{message}: {first}" if first and first not in message else message


def check_jobs(overrides: list[str], conf_dir: Path) -> bool:
    """Compose each of :func:`store_variants`, then refuse in one line (:class:`UsageError`,
    ``ConfigError``) a config that does not compose, a value out of range, ``dataset=prepared``
    without ``dataset.path``, a path that is not a readable store (its manifest:
    ``sweep.data.store.read_manifest``) and a ``data.keep`` column or value that store lacks
    (``sweep.data.selection.check_keep``). Each store's manifest is read once.

    Returns whether the composed config asks for a multirun (``hydra.mode``: an experiment or
    an Optuna search sets it)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from sweep.config.schema import validate

    manifests: dict[str, object] = {}
    multirun = False
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        for variant in store_variants(overrides):
            try:
                cfg = compose("train", overrides=variant, return_hydra_config=True)
                multirun |= str(cfg.hydra.mode) == str(RunMode.MULTIRUN)
            except (HydraException, OmegaConfBaseException) as error:
                raise UsageError(composition_error(error)) from error
            validate(cfg)
            if cfg.dataset.kind == "demo":
                check_demo(cfg)
                continue
            if OmegaConf.is_missing(cfg.dataset, "path") or cfg.dataset.path is None:
                raise UsageError(
                    "dataset=prepared needs dataset.path, the store folder scvi-sweep-prepare "
                    "wrote: python train.py dataset=prepared dataset.path=/ssd/store"
                )
            try:
                path = str(cfg.dataset.path)
                keep = OmegaConf.to_container(cfg.data.keep, resolve=True)
            except OmegaConfBaseException:
                continue  # an interpolation only a job can resolve (${hydra:...}): it checks
            if path not in manifests:
                manifests[path] = read_store_manifest(path)
            check_keep_values(keep, manifests[path])
    return multirun


def check_demo(cfg) -> None:
    """A synthetic data set (``dataset=demo``, ``census_shape``) makes its own store: refuse a
    ``dataset.path`` given with it, and check ``data.keep`` against its store where an earlier
    run built it already (else the job checks it once built)."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_missing(cfg.dataset, "path") and cfg.dataset.path:
        raise UsageError(
            f"dataset.path={cfg.dataset.path} is given with a synthetic data set (dataset=demo, "
            "census_shape), which makes its own store: add dataset=prepared to train on the "
            "store at that path, or leave dataset.path out"
        )
    keep = OmegaConf.to_container(cfg.data.keep, resolve=True)
    if not keep:
        return
    from sweep.data.demo import demo_folder
    from sweep.data.store import MANIFEST_NAME

    store = demo_folder(cfg.dataset) / "store"
    if (store / MANIFEST_NAME).is_file():
        check_keep_values(keep, read_store_manifest(str(store)))


def read_store_manifest(path: str):
    """The manifest of the store at ``path``, or :class:`UsageError` naming ``dataset.path`` and
    the fix (``sweep.data.store.read_manifest``'s message)."""
    from sweep.data.store import StoreError, read_manifest

    try:
        return read_manifest(path)
    except StoreError as error:
        raise UsageError(f"dataset.path={path}: {error}") from error


def check_keep_values(keep: dict, manifest) -> None:
    """``data.keep`` against the store's vocabularies (``sweep.data.selection.check_keep``)."""
    if not keep:
        return
    from sweep.data.selection import check_keep

    try:
        check_keep(keep, manifest.vocab)
    except ValueError as error:  # check_keep raises only for a column or value the store lacks
        raise UsageError(str(error)) from error
