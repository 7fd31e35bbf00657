"""Structured config schemas: types and allowed values for every key of ``conf/train.yaml``.

Registered in Hydra's ConfigStore as ``train_schema`` and used as the first entry of the defaults
list, so an ill-typed value (``model.n_hidden=abc``) or an unknown key fails at compose time,
before any data is read. Each model/plan key is one scvi-tools constructor argument.

The schema is the one home of every key's default and meaning: an option file of a group
(``conf/model/czi_128.yaml``) holds only the keys that make it that option, and an option close
to another names it in its defaults list (``conf/model/hidden_512.yaml``: ``czi_128`` with
``n_hidden: 512``). The ``model`` and ``plan`` defaults are scvi-tools' own; the other groups'
are their default option's (``conf/train.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class SyntheticConfig:
    """The synthetic generator's parameters (sweep.data.synthetic): census-like h5ad files.

    ``output`` must be set to generate; the demo data set fills it in from its cache folder.
    ``shape`` picks the data set's design: ``uniform`` (the demo's: datasets of similar sizes,
    ``donors_per_dataset`` donors each, two donors profiled twice) or ``census`` (the CELLxGENE
    Census's heavy tails: many small datasets and a few large ones, heavy-tailed donors per
    dataset and cells per donor, a set share of donors profiled with two assays or suspension
    types, low-quality shares that vary by dataset). The fields marked "census" act only there.
    """

    output: str | None = None  # folder to write dataset_{i:03d}.h5ad into (created)
    n_datasets: int = 6  # one h5ad file per dataset
    cells_per_dataset: int = 4000  # mean; uniform: sizes vary in 0.5x..1.5x, each >= 50 cells;
    #   census: a Pareto law truncated to [min_cells_per_dataset, max_cells_per_dataset]
    n_genes: int = 3000  # genes of every file (same ids, same order); the last 13 are MT genes
    n_cell_types: int = 8  # first n of CELL_TYPES
    donors_per_dataset: int = 3  # donors nested in datasets: "D{i:03d}-donor{k}"; census: the
    #   mean of a heavy-tailed (1 + log-normal) count, at most one donor per 10 cells
    batch_effect_strength: float = 1.0  # scales every gene-specific batch effect; 0 = none
    low_quality_fraction: float = 0.08  # share of cells with < 300 expressed genes; census: the
    #   mean of per-dataset shares drawn from a Beta law (most datasets few, some many)
    non_primary_fraction: float = 0.05  # share of cells with is_primary_data False
    seed: int = 0
    shape: str = "uniform"  # uniform | census (see above)
    min_cells_per_dataset: int = 200  # census: the smallest dataset's cells
    max_cells_per_dataset: int = 30_000  # census: the largest dataset's cells (CELLxGENE's go
    #   beyond 500,000; a file's memory is bounded by one chunk of cells whatever its size)
    multi_protocol_donor_fraction: float = 0.05  # census: share of donors (exact, rounded)
    #   profiled with a second assay (same suspension type) or suspension type (same assay)


def described(default: Any = MISSING, text: str = "", **kwargs) -> Any:
    """A dataclass field with its one-line description ``text`` in ``metadata["help"]``, the one
    home of what the key means (``scvi-sweep-prepare --help`` prints it; OmegaConf ignores it).
    ``default_factory=`` for a list; ``MISSING`` (the default): a key that must be given."""
    if "default_factory" in kwargs:
        return field(default_factory=kwargs["default_factory"], metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class PrepareOptions:
    """How prepare builds a store (``conf/prepare.yaml``; the demo data set's ``dataset.prepare``):
    every key but what to read and where to write. Each key's meaning is its ``help``."""

    genes: str = described(
        "hvg",
        "hvg (highly variable genes), or a TSV/CSV whose first column lists Ensembl ids: their "
        "order is kept, ids absent from a source are zero-filled, a header line is optional",
    )
    n_top_genes: int = described(8000, "genes=hvg: how many highly variable genes (CZI: 8000)")
    hvg_batch_keys: list[str] = described(
        text="genes=hvg: obs columns whose combinations are the HVG batches (CZI's)",
        default_factory=lambda: ["suspension_type", "assay"],
    )
    hvg_sample_cells: int = described(
        200_000, "genes=hvg: at most this many cells in the sample the HVGs are chosen from"
    )
    hvg_min_genes: int = described(
        300, "genes=hvg: sample primary cells with at least this many expressed genes (CZI)"
    )
    shard_size: int = described(10_000, "cells per shard of the store (the last may be short)")
    chunk_rows: int = described(
        10_000, "source rows a worker reads at a time: its memory, not the store"
    )
    seed: int = described(0, "seed of the HVG sample and of the shuffle of cells across sources")
    workers: int | None = described(None, "worker processes; null: every CPU this process may use")
    overwrite: bool = described(
        False, "true: replace a complete store that was made with a different config"
    )
    skip_bad_sources: bool = described(
        False,
        "true: leave bad sources out (listed in the manifest and the log) instead of stopping",
    )
    progress: bool = described(
        True, "progress bars on stderr (files or cells done, cells/s, time left)"
    )


@dataclass
class PrepareConfig(PrepareOptions):
    """The keys of ``conf/prepare.yaml``: :class:`PrepareOptions` plus the sources and the store
    folder (``???``: required)."""

    source: Any = described(
        MISSING,
        "the source h5ad files: a glob ('/data/*.h5ad', quoted in the shell) or a list "
        "([/data/a.h5ad,/data/b.h5ad])",
    )
    output: str = described(
        MISSING, "the store folder to write: new, empty, a store, or an unfinished store"
    )


@dataclass
class DatasetConfig:
    """Where the prepared store comes from. ``kind=demo`` makes it from the synthetic generator."""

    kind: str = "prepared"  # prepared | demo
    path: str | None = MISSING  # the prepared store folder (demo: filled in from the cache)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # demo only
    prepare: PrepareOptions = field(default_factory=PrepareOptions)  # demo only


@dataclass
class DataConfig:
    """Which cells train: the ``data`` group (CZI: primary cells with >= 300 expressed genes)."""

    min_genes: int = 300  # n_genes_all >= min_genes (expressed genes over ALL source genes)
    primary_only: bool = True  # keep is_primary_data == True only
    validation_fraction: float = 0.1  # held-out share, same cells for every job with this filter
    split_seed: int = 0  # the validation flags' seed, and the max_cells subsample's
    # at most this many training cells (validation cells in proportion): a seeded subsample of
    # the cells that pass the filter, stratified by dataset_id, the same cells for every job of
    # this filter and split_seed; null: every cell (sweep.data.selection)
    max_cells: int | None = None
    # value filter: coded obs column -> the values whose cells are kept, e.g. {tissue: [blood]}
    # (data.keep={tissue:[blood,lung]} or +data.keep.assay=[...]); {}: no value filter
    keep: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class BatchConfig:
    """The ``batch`` group: how obs columns become scVI's batch and categorical covariates."""

    batch_keys: list[str] = field(default_factory=lambda: ["dataset_id", "donor_id"])
    covariate_keys: list[str] = field(default_factory=list)
    separator: str = "|"  # joins the batch_keys values into one category label


@dataclass
class ModelConfig:
    """scvi-tools ``SCVI`` / ``VAE`` constructor arguments (the ``model`` group); defaults are
    scvi-tools' own."""

    n_hidden: int = 128
    n_latent: int = 10
    n_layers: int = 1
    dropout_rate: float = 0.1  # encoder only; the decoder has none
    dispersion: str = "gene"
    gene_likelihood: str = "zinb"
    latent_distribution: str = "normal"
    encode_covariates: bool = False  # False: the encoder never sees the batch
    deeply_inject_covariates: bool = True  # True: batch one-hot enters every decoder layer
    use_batch_norm: str = "both"
    use_layer_norm: str = "none"
    use_observed_lib_size: bool = True  # True: scvi-tools builds the l_encoder but leaves it unused


@dataclass
class PlanConfig:
    """scvi-tools ``TrainingPlan`` arguments (the ``plan`` group); defaults are scvi-tools' own."""

    optimizer: str = "Adam"
    lr: float = 1e-3
    weight_decay: float = 1e-6
    eps: float = 0.01
    n_epochs_kl_warmup: int | None = 400
    n_steps_kl_warmup: int | None = None
    max_kl_weight: float = 1.0
    min_kl_weight: float = 0.0
    reduce_lr_on_plateau: bool = False


@dataclass
class LoaderConfig:
    """The ``loader`` group. Seed/cellarium keys keep their meaning; block/fetch keys are ours."""

    batch_size: int = 1024
    # None: cores - 1, at most 8; 0 on a machine of <= 2 cores when under half of the store is
    # in the page cache (sweep.data.datamodule.auto_num_workers; the log says which and why)
    num_workers: int | None = None
    prefetch_factor: int | None = 2  # batches each worker keeps ready (ignored with 0 workers)
    persistent_workers: bool = True
    pin_memory: bool = False
    max_cache_size: int = 3  # shards a worker reads from at once (open handles)
    cache_size_strictly_enforced: bool = True  # raise if a worker would need more open shards
    block_size: int = 256  # rows per contiguous read
    fetch_size: int = 16384  # cells gathered and shuffled together before batches are cut
    run_size: int = 16  # a fetch is shuffled in runs of this many consecutive cells (1: cells)
    drop_last: bool = False  # drop each worker's short last training batch (counted either way)
    reader_thread: bool = True  # with num_workers=0, read batches in a background thread
    batches_per_handoff: int = 4  # batches a worker sends per message to the main process
    read_ahead: bool = True  # a thread per reader reads its next group of blocks from disk ahead
    # page cache each reader's read-ahead fills beyond the shard it is on, MiB (not its memory)
    read_ahead_mib: int = 256


def named_device_count(devices) -> int | None:
    """How many devices Lightning's ``trainer.devices`` names: an int, ``"2"``, ``"0,1"`` or a
    list; None for ``"auto"`` and ``-1``, which only the machine the job runs on can count."""
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([part for part in text.split(",") if part.strip()])
        return None if text in ("auto", "-1") else int(text)
    if isinstance(devices, int):
        return None if devices == -1 else devices
    return len(list(devices))


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` arguments (the ``trainer`` group)."""

    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"  # Lightning's; "ddp": one job over ``devices`` (gloo on the CPU)
    max_epochs: int = 100  # CZI's; the demo data set sets 10
    precision: Any = "32-true"
    enable_progress_bar: bool = True  # progress over each epoch's steps (false: quiet)
    # where stderr is not a terminal (SLURM), a progress line every N seconds; 0: epoch ends only
    progress_log_every_s: float = 60.0
    log_every_n_steps: int = 10
    checkpoint_every_n_epochs: int = 1  # checkpoints/last.ckpt in the run folder; 0: none
    # also in the middle of epochs, every N optimizer steps; 0: none
    checkpoint_every_n_steps: int = 0
    # the validation loss also every N optimizer steps (steps.csv), on step_validation_cells
    # validation cells (seeded, the same for every job of a data filter); 0: at epoch ends only
    validate_every_n_steps: int = 1000
    step_validation_cells: int = 10000
    # how injected batch/covariate one-hots are computed (sweep.model.batch_injection): lookup
    # (a weight column each) or one_hot (scvi-tools' product); same model, same outputs
    batch_injection: str = "lookup"


@dataclass
class LoggerConfig:
    """The ``logger`` group: ``wandb`` (offline by default) or ``none``."""

    kind: str = "wandb"  # wandb | none
    project: str = "scvi-sweep"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled
    tags: list[str] = field(default_factory=list)


@dataclass
class EvaluationConfig:
    """The ``evaluation`` group: scib-metrics scores on a fixed subsample of validation cells."""

    enabled: bool = True
    n_cells: int = 1000  # validation cells scored (seeded; the same for every job of a filter)
    # each scored batch should hold this many cells: with thousands of batches the cells are
    # drawn batch first (sweep.evaluation.cells.draw_by_batch)
    min_cells_per_batch: int = 20
    seed: int = 0
    batch_keys: list[str] = field(default_factory=lambda: ["dataset_id", "donor_id"])
    label_key: str = "cell_type"
    min_genes: int = 0  # score only cells with n_genes_all >= this (same cells across data filters)
    epochs: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50, 100])  # + the last
    every_n_steps: int = 10000  # also every N optimizer steps (integration.csv); 0: epochs only
    convergence_tolerance: float = 0.01  # "epochs until within 1% of the final value"


@dataclass
class OptunaTrialConfig:
    """Set by the Optuna sweeper (sweep.study) per trial: where its pruning callback reports."""

    storage: str | None = None  # the study's journal file or database URL
    study_name: str | None = None
    trial: int | None = None  # the trial number


@dataclass
class TrainConfig:
    """The whole ``train.py`` config."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    seed: int = 0
    task_name: str = "train"
    tags: list[str] = field(default_factory=list)
    optimized_metric: Any = "elbo_validation"  # a metrics.json key, or a list (multi-objective)
    save_model: bool = True
    resume: bool = False  # continue the newest incomplete run of the same overrides (checkpoint.py)
    optuna: OptunaTrialConfig = field(default_factory=OptunaTrialConfig)
    # true: print each job's overrides, cells per epoch, epochs, cells seen and estimated time,
    # and start nothing (sweep.planning; read from the command line only)
    dry_run: bool = False
    # the dry run's training throughput, cells/s on one device; null: measured by a short
    # calibration on the store and this machine's device (cached in the cache folder)
    dry_run_cells_per_s: float | None = None
    dry_run_calibration_steps: int = 200  # training steps the calibration times


#: allowed values of string keys, checked by :func:`validate` (the schema only checks types)
CHOICES = {
    "dataset.kind": ("prepared", "demo"),
    "model.dispersion": ("gene", "gene-batch", "gene-label", "gene-cell"),
    "model.gene_likelihood": ("nb", "zinb", "poisson"),
    "model.latent_distribution": ("normal", "ln"),
    "model.use_batch_norm": ("encoder", "decoder", "none", "both"),
    "model.use_layer_norm": ("encoder", "decoder", "none", "both"),
    "plan.optimizer": ("Adam", "AdamW"),
    "logger.kind": ("wandb", "none"),
    "logger.mode": ("offline", "online", "disabled"),
    "trainer.batch_injection": ("lookup", "one_hot"),
}

#: (key, lower bound, upper bound) for numeric keys, inclusive
RANGES = (
    ("data.min_genes", 0, None),
    ("data.validation_fraction", 0.0, 0.9),
    ("data.max_cells", 1, None),
    ("model.n_hidden", 1, None),
    ("model.n_latent", 1, None),
    ("model.n_layers", 1, None),
    ("model.dropout_rate", 0.0, 0.99),
    ("plan.lr", 0.0, None),
    ("plan.max_kl_weight", 0.0, None),
    ("loader.batch_size", 1, None),
    ("loader.max_cache_size", 1, None),
    ("loader.block_size", 1, None),
    ("loader.fetch_size", 1, None),
    ("loader.run_size", 1, None),
    ("loader.batches_per_handoff", 1, None),
    ("loader.read_ahead_mib", 1, None),
    ("trainer.max_epochs", 1, None),
    ("trainer.progress_log_every_s", 0.0, None),
    ("trainer.checkpoint_every_n_epochs", 0, None),
    ("trainer.checkpoint_every_n_steps", 0, None),
    ("trainer.validate_every_n_steps", 0, None),
    ("trainer.step_validation_cells", 1, None),
    ("evaluation.every_n_steps", 0, None),
    ("evaluation.n_cells", 10, None),
    ("evaluation.min_cells_per_batch", 1, None),
    ("evaluation.convergence_tolerance", 0.0, None),
    ("dry_run_cells_per_s", 1.0, None),
    ("dry_run_calibration_steps", 10, None),
)


class ConfigError(ValueError):
    """A config key or value the schema refuses; the message names the key and what it takes."""


def check_value(key: str, value) -> None:
    """Raise :class:`ConfigError` when ``value`` is outside what :data:`CHOICES` or
    :data:`RANGES` allow for ``key`` (keys they do not name pass)."""
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"config key {key}={value!r} is not one of {list(CHOICES[key])}")
    for name, low, high in RANGES:
        if name != key or value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            return  # a type error: the schema names it when Hydra composes the config
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"config key {key}={value!r} must lie in [{low}, {high or 'inf'}]")
    if key == "loader.num_workers" and isinstance(value, int) and value < 0:
        raise ConfigError(f"config key loader.num_workers={value} must be >= 0 (or null: auto)")


def validate(cfg) -> None:
    """Check allowed values and ranges of a composed config; raise :class:`ConfigError` naming
    the key and what it accepts."""
    from omegaconf import OmegaConf

    for key in [*CHOICES, *(name for name, _, _ in RANGES), "loader.num_workers"]:
        check_value(key, OmegaConf.select(cfg, key))
    if not cfg.batch.batch_keys:
        raise ConfigError("config key batch.batch_keys is empty: name at least one obs column")
    overlap = set(cfg.batch.batch_keys) & set(cfg.batch.covariate_keys)
    if overlap:
        raise ConfigError(
            f"obs columns {sorted(overlap)} are in both batch.batch_keys and batch.covariate_keys"
        )


def schema_keys(node: type = TrainConfig, prefix: str = "") -> dict[str, bool]:
    """Every dotted key of the schema -> whether it takes keys of its own below it (a dict or
    ``Any`` field such as ``dataset.synthetic``); dataclass fields are followed down."""
    import dataclasses
    import typing

    keys, types = {}, typing.get_type_hints(node)
    for item in dataclasses.fields(node):
        key, kind = prefix + item.name, types[item.name]
        if dataclasses.is_dataclass(kind):
            keys[key] = False
            keys.update(schema_keys(kind, key + "."))
        else:
            keys[key] = kind is Any or typing.get_origin(kind) is dict
    return keys


def register_schema() -> None:
    """Make ``train_schema`` available to the defaults list of ``conf/train.yaml``.

    ``data.keep`` takes new keys without ``+`` (``data.keep={tissue:[blood]}``,
    ``data.keep.assay=[...]``): its node is left out of struct mode, the rest of the schema
    refuses unknown keys."""
    from omegaconf import OmegaConf

    node = OmegaConf.structured(TrainConfig)
    OmegaConf.set_struct(node.data.keep, False)
    ConfigStore.instance().store(name="train_schema", node=node)


def compose_train(overrides: list[str]):
    """``conf/train.yaml`` composed with ``overrides`` outside a Hydra app (tests, benchmarks,
    tools); not validated (:func:`validate`)."""
    from hydra import compose, initialize_config_dir

    from sweep.paths import CONF_DIR

    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)
