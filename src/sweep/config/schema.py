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
    """

    output: str | None = None  # folder to write dataset_{i:03d}.h5ad into (created)
    n_datasets: int = 6  # one h5ad file per dataset
    cells_per_dataset: int = 4000  # mean; sizes vary in 0.5x..1.5x, each >= 50 cells
    n_genes: int = 3000  # genes of every file (same ids, same order); the last 13 are MT genes
    n_cell_types: int = 8  # first n of CELL_TYPES
    donors_per_dataset: int = 3  # donors nested in datasets: "D{i:03d}-donor{k}"
    batch_effect_strength: float = 1.0  # scales every gene-specific batch effect; 0 = none
    low_quality_fraction: float = 0.08  # share of cells with < 300 expressed genes
    non_primary_fraction: float = 0.05  # share of cells with is_primary_data False
    seed: int = 0


@dataclass
class PrepareOptions:
    """How prepare builds a store (``conf/prepare.yaml``; the demo data set's ``dataset.prepare``):
    every key but what to read and where to write."""

    genes: str = "hvg"  # hvg | path of a TSV/CSV whose first column lists Ensembl ids (order
    #   kept, ids absent from a source are zero-filled; header line optional)
    n_top_genes: int = 8000  # genes=hvg: how many highly variable genes (CZI: 8000)
    hvg_batch_keys: list[str] = field(default_factory=lambda: ["suspension_type", "assay"])  # CZI
    hvg_sample_cells: int = 200_000  # genes=hvg: at most this many cells in the HVG sample
    hvg_min_genes: int = 300  # genes=hvg: sample primary cells with n_genes_all >= this (CZI)
    shard_size: int = 10_000  # cells per shard (the last one may be short)
    chunk_rows: int = 10_000  # source rows read at a time per worker (memory; not the store)
    seed: int = 0  # the HVG sample and the shuffle of cells across all sources
    workers: int | None = None  # worker processes; null: the CPUs this process may use
    overwrite: bool = False  # true: replace a complete store made with a different config
    skip_bad_sources: bool = False  # true: leave bad sources out (listed in the manifest, logged)
    progress: bool = True  # progress bars (files or cells done, cells/s, ETA) on stderr


@dataclass
class PrepareConfig(PrepareOptions):
    """The keys of ``conf/prepare.yaml``: :class:`PrepareOptions` plus the sources and the store
    folder (``???``: required)."""

    source: Any = MISSING  # glob string ('/data/*.h5ad', quoted in the shell) or list of files
    output: str = MISSING  # the store folder (created; empty, a store, or an unfinished store)


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
    split_seed: int = 0


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
    num_workers: int | None = None  # None: from the CPU count (cores - 1, at most 8)
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


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` arguments (the ``trainer`` group)."""

    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"  # Lightning's; "ddp": one job over ``devices`` (gloo on the CPU)
    max_epochs: int = 100  # CZI's; the demo data set sets 10
    precision: Any = "32-true"
    enable_progress_bar: bool = True
    log_every_n_steps: int = 10
    checkpoint_every_n_epochs: int = 1  # checkpoints/last.ckpt in the run folder; 0: none
    # also in the middle of epochs, every N optimizer steps; 0: none
    checkpoint_every_n_steps: int = 0
    # the validation loss also every N optimizer steps (steps.csv), on step_validation_cells
    # validation cells (seeded, the same for every job of a data filter); 0: at epoch ends only
    validate_every_n_steps: int = 1000
    step_validation_cells: int = 10000


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
}

#: (key, lower bound, upper bound) for numeric keys, inclusive
RANGES = (
    ("data.min_genes", 0, None),
    ("data.validation_fraction", 0.0, 0.9),
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
    ("trainer.max_epochs", 1, None),
    ("trainer.checkpoint_every_n_epochs", 0, None),
    ("trainer.checkpoint_every_n_steps", 0, None),
    ("trainer.validate_every_n_steps", 0, None),
    ("trainer.step_validation_cells", 1, None),
    ("evaluation.every_n_steps", 0, None),
    ("evaluation.n_cells", 10, None),
    ("evaluation.convergence_tolerance", 0.0, None),
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
    """Make ``train_schema`` available to the defaults list of ``conf/train.yaml``."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def compose_train(overrides: list[str]):
    """``conf/train.yaml`` composed with ``overrides`` outside a Hydra app (tests, benchmarks,
    tools); not validated (:func:`validate`)."""
    from hydra import compose, initialize_config_dir

    from sweep.paths import CONF_DIR

    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)
