"""The architecture of a saved scvi-tools SCVI model, read from its file (the command line:
``scvi-sweep-inspect-model PATH``, sweep.cli.inspect_command).

Every model key is read twice where it can be: from the saved weights' shapes and from the
constructor arguments scvi-tools records in ``model.pt`` (``attr_dict["init_params_"]``). The two
can disagree (CZI's census model: its config says n_hidden 512, its weights have 128), and the
report says so. Keys the weights cannot show (dropout, likelihood, ...) come from the init params.

``model.pt`` is a pickle; it is read with an allow-list unpickler, so a file that would run code
on loading (``os.system`` via ``__reduce__``, a TorchScript archive) is refused, not executed. A
trained model's pickle also holds its training history (pandas DataFrames), so the few pandas
constructors that rebuild a DataFrame are allowed too.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

from sweep.config.schema import ModelConfig, compose_train
from sweep.paths import CONF_DIR

#: the ``model`` group's keys (scvi-tools constructor arguments), in schema order
MODEL_KEYS = tuple(f.name for f in fields(ModelConfig))

#: (module, name) of every global an scvi-tools model.pt needs, trained or not; torch resolves its
#: storage types (``torch.FloatStorage``, ...) itself, before asking the unpickler. Each is a type
#: or a rebuild function whose only callables are these types: none imports or evaluates anything.
ALLOWED_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),  # registry_["field_registries"]
        ("__builtin__", "dict"),  # the defaultdict's factory (protocol 2 spelling)
        ("builtins", "dict"),
        ("_codecs", "encode"),  # bytes, as protocol 2 writes them
        ("torch._utils", "_rebuild_tensor_v2"),
        ("numpy", "ndarray"),  # var_names and registry category arrays
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),  # files written with numpy < 2
        ("numpy.core.multiarray", "scalar"),
        # attr_dict["history_"]: {metric: DataFrame of one object column, indexed by epoch}
        ("pandas.core.frame", "DataFrame"),  # made empty, then filled by its __setstate__
        ("pandas.core.internals.managers", "BlockManager"),  # BlockManager(blocks, axes)
        ("pandas._libs.internals", "_unpickle_block"),  # new_block(values, placement, ndim)
        ("pandas.core.indexes.base", "_new_Index"),  # cls.__new__(cls, **d), cls one of these
        ("pandas.core.indexes.base", "Index"),  # the columns and the epoch index
        ("__builtin__", "slice"),  # a block's placement (protocol 2 spelling)
        ("builtins", "slice"),
    }
)
LOADER = (
    f"restricted unpickler (only {len(ALLOWED_GLOBALS)} allow-listed numpy/pandas/torch/"
    "collections globals; no other code from the file can run)"
)

#: state-dict entries that are buffers, not parameters
BUFFERS = (
    "running_mean",
    "running_var",
    "num_batches_tracked",
    "library_log_means",
    "library_log_vars",
)
ENCODER_LAYER = "z_encoder.encoder.fc_layers.Layer {}"
DECODER_LAYER = "decoder.px_decoder.fc_layers.Layer {}"
NOTES = {
    "encode_covariates": {
        True: "the encoder sees batch and covariates",
        False: "the encoder is blind to batch and covariates",
    },
    "deeply_inject_covariates": {
        True: "batch and covariates enter every decoder layer",
        False: "batch and covariates enter the first decoder layer only",
    },
    "use_observed_lib_size": {
        True: "l_encoder built but unused",
        False: "l_encoder used for the library size",
    },
}
SHOWN = 5  # ids listed for genes and batch categories


class UnsafeModelFile(pickle.UnpicklingError):
    """A model file that needs a global outside ``ALLOWED_GLOBALS``, sets attributes on a class or
    function, or is a TorchScript archive."""


class _RestrictedUnpickler(pickle._Unpickler):
    """An Unpickler that can build only the types and call only the functions allow-listed.

    It is pickle's Python implementation, whose opcodes can be overridden: BUILD is refused on a
    class or function, where it would set attributes that every later use of it sees (pandas'
    Index is a Python class, so ``setattr(Index, ...)`` would otherwise succeed).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeModelFile(
                f"disallowed global {module}.{name} (not a type a model file needs)"
            )
        return super().find_class(module, name)

    def load_build(self):
        target = self.stack[-2]  # the object under the state BUILD sets
        if callable(target):
            raise UnsafeModelFile(f"the file sets attributes on {target!r}, not on data")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


#: what torch.load needs of a ``pickle_module``: both its Unpickler and its load are restricted
_RESTRICTED_PICKLE = SimpleNamespace(
    __name__="restricted_pickle",
    Unpickler=_RestrictedUnpickler,
    load=lambda file, **kwargs: _RestrictedUnpickler(file, **kwargs).load(),
)


def load_model_file(path: str | Path) -> dict:
    """The dict in a ``model.pt``, unpickled with ``ALLOWED_GLOBALS`` only (tensors on the CPU)."""
    with open(path, "rb") as file:
        is_zip = file.read(4) == b"PK\x03\x04"  # torch.load's own test for its zip format
    if is_zip:
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("constants.pkl") for name in archive.namelist()):
                # torch.load would hand a TorchScript archive to torch.jit.load, past the unpickler
                raise UnsafeModelFile(f"{path}: refused: a TorchScript archive, not a model.pt")
    try:
        # torch takes a pickle_module only with weights_only=False; that module is the restriction
        return torch.load(
            path, map_location="cpu", pickle_module=_RESTRICTED_PICKLE, weights_only=False
        )
    except UnsafeModelFile as err:
        raise UnsafeModelFile(f"{path}: refused: {err}") from None


@dataclass(kw_only=True)
class ModelReport(ModelConfig):
    """What a saved SCVI model is: the ``model`` keys (``ModelConfig``'s fields) resolved
    weights-first, and what the file says besides.

    ``sources[key]`` says where each model key's value came from: ``weights``, ``init params``
    or the scvi-tools default; ``disagreements`` lists where weights and init params (or the
    registry) contradict each other. :func:`inspect_model` sets every model key.
    """

    path: Path  # the model.pt read
    loader: str
    model_name: str
    scvi_version: str
    genes: list[str]  # var names, in model order
    batch_categories: list[str]
    covariates: dict[str, int]  # categorical covariate -> number of categories
    n_parameters: int  # trainable parameters (buffers excluded)
    sources: dict[str, str]
    disagreements: list[str]

    @property
    def l_encoder_used(self) -> bool:
        """scvi-tools always builds the l_encoder; it is used only without observed library size."""
        return not self.use_observed_lib_size

    def settings(self) -> dict:
        """The model keys, as in a ``model`` config."""
        return {key: getattr(self, key) for key in MODEL_KEYS}


def _model_file(path: str | Path) -> Path:
    path = Path(path)
    file = path / "model.pt" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no model.pt at {path}")
    return file


def _init_params(init_params: dict) -> dict:
    """SCVI's constructor arguments: ``{"non_kwargs": {...}, "kwargs": {"kwargs": {...}}}`` flat."""
    flat = dict(init_params["non_kwargs"])
    for passed in init_params["kwargs"].values():
        flat.update(passed)
    return flat


@cache
def _scvi_defaults() -> tuple[str, dict]:
    """The installed scvi-tools' version and its VAE constructor defaults."""
    from inspect import signature

    import scvi
    from scvi.module import VAE

    return scvi.__version__, {p.name: p.default for p in signature(VAE).parameters.values()}


def _read_weights(state: dict, n_batch: int, n_labels: int, n_continuous: int) -> dict:
    """Model keys that the state dict's shapes show; None where they cannot tell.

    Linear weights have shape (out_features, in_features). The decoder's first layer takes
    n_latent + continuous covariates + one-hots (batch and each categorical covariate with more
    than one category); deeper layers take the one-hots again only with deep injection.
    """

    def shape(key: str) -> tuple[int, ...]:
        return tuple(state[key].shape)

    n_hidden, encoder_in = shape(f"{ENCODER_LAYER.format(0)}.0.weight")
    n_layers = sum(
        1 for key in state if key.startswith(ENCODER_LAYER.format("")) and key.endswith(".0.weight")
    )
    n_latent = shape("z_encoder.mean_encoder.weight")[0]
    n_genes = shape("decoder.px_scale_decoder.0.weight")[0]
    covariate_width = shape(f"{DECODER_LAYER.format(0)}.0.weight")[1] - n_latent
    has_one_hots = covariate_width > n_continuous
    if "px_r" not in state:
        dispersion = "gene-cell"
    elif len(shape("px_r")) == 1:
        dispersion = "gene"
    else:
        by_size = {"gene-batch": n_batch, "gene-label": n_labels}
        fits = [name for name, size in by_size.items() if size == shape("px_r")[1]]
        dispersion = fits[0] if len(fits) == 1 else None
    batch_norm = (
        f"{ENCODER_LAYER.format(0)}.1.weight" in state,
        f"{DECODER_LAYER.format(0)}.1.weight" in state,
    )
    return {
        "n_genes": n_genes,
        "covariate_width": covariate_width,
        "n_hidden": n_hidden,
        "n_latent": n_latent,
        "n_layers": n_layers,
        "dispersion": dispersion,
        "encode_covariates": encoder_in > n_genes if covariate_width else None,
        "deeply_inject_covariates": (
            shape(f"{DECODER_LAYER.format(1)}.0.weight")[1] > n_hidden
            if n_layers > 1 and has_one_hots
            else None
        ),
        "use_batch_norm": {
            (True, True): "both",
            (True, False): "encoder",
            (False, True): "decoder",
            (False, False): "none",
        }[batch_norm],
        # scvi-tools registers library_log_means only when it needs the l_encoder
        "use_observed_lib_size": "library_log_means" not in state,
    }


def inspect_model(path: str | Path) -> ModelReport:
    """Read a saved model's architecture, every model key from its weights where they show it,
    else from the constructor arguments scvi-tools recorded.

    Parameters
    ----------
    path
        An scvi-tools model folder (``model/`` of a run folder) or its ``model.pt``.

    Returns
    -------
    The keys, the genes, the batch and covariate categories, and where the weights and the
    recorded arguments disagree.

    Raises
    ------
    UnsafeModelFile
        The file would run code on loading (it is never executed).
    FileNotFoundError
        No model.pt at ``path``.
    """
    file = _model_file(path)
    saved = load_model_file(file)
    state, attrs = saved["model_state_dict"], saved["attr_dict"]
    registry = attrs["registry_"]
    registries = registry["field_registries"]
    batch_categories = [
        str(c) for c in registries["batch"]["state_registry"]["categorical_mapping"]
    ]
    categorical = registries.get("extra_categorical_covs", {}).get("state_registry", {})
    covariates = {
        key: len(categorical["mappings"][key]) for key in categorical.get("field_keys", [])
    }
    n_continuous = (
        registries.get("extra_continuous_covs", {})
        .get("summary_stats", {})
        .get("n_extra_continuous_covs", 0)
    )
    n_labels = registries["labels"]["summary_stats"]["n_labels"]
    genes = [str(g) for g in saved["var_names"]]

    seen = _read_weights(state, len(batch_categories), n_labels, n_continuous)
    init = _init_params(attrs["init_params_"])
    disagreements = []
    if seen["n_genes"] != len(genes):
        disagreements.append(f"genes: weights have {seen['n_genes']}, var_names {len(genes)}")
    one_hots = sum(n for n in (len(batch_categories), *covariates.values()) if n > 1)
    if seen["covariate_width"] != n_continuous + one_hots:
        disagreements.append(
            f"covariates: the decoder takes {seen['covariate_width']} covariate inputs, the "
            f"registry's batch and covariates make {n_continuous + one_hots}"
        )

    values, sources = {}, {}
    for key in MODEL_KEYS:
        if seen.get(key) is not None:
            values[key], sources[key] = seen[key], "weights"
            if key in init and init[key] != seen[key]:
                disagreements.append(
                    f"{key}: weights say {seen[key]!r}, init params say {init[key]!r}"
                )
        elif key in init:
            values[key], sources[key] = init[key], "init params (not visible in weights)"
        else:  # older scvi-tools recorded only the arguments SCVI's own signature names
            version, defaults = _scvi_defaults()
            values[key], sources[key] = defaults[key], f"scvi-tools {version} default"

    n_parameters = sum(
        tensor.numel()
        for key, tensor in state.items()
        if isinstance(tensor, torch.Tensor) and not key.endswith(BUFFERS)
    )
    return ModelReport(
        path=file,
        loader=LOADER,
        model_name=registry["model_name"],
        scvi_version=registry["scvi_version"],
        genes=genes,
        batch_categories=batch_categories,
        covariates=covariates,
        n_parameters=n_parameters,
        sources=sources,
        disagreements=disagreements,
        **values,
    )


def compose_models(overrides: list[str]) -> list:
    """The ``model`` group of ``conf/train.yaml`` composed with each override (e.g. model=NAME)."""
    return [compose_train([override]).model for override in overrides]


def differences(report: ModelReport, model_cfg) -> dict[str, tuple]:
    """key -> (model value, config value) for every key of ``model_cfg`` the model differs in."""
    config = OmegaConf.to_container(model_cfg, resolve=True)
    settings = report.settings()
    return {
        key: (settings.get(key), value)
        for key, value in config.items()
        if settings.get(key) != value
    }


def matching_configs(report: ModelReport) -> list[str]:
    """Names of the ``conf/model/*.yaml`` configs the model matches in every key."""
    names = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))
    configs = compose_models([f"model={name}" for name in names])
    return [name for name, cfg in zip(names, configs, strict=True) if not differences(report, cfg)]


def _first(ids: list[str]) -> str:
    more = ", ..." if len(ids) > SHOWN else ""
    return f"{len(ids)} ({', '.join(ids[:SHOWN])}{more})"


def format_report(report: ModelReport, against: str | None = None) -> str:
    """The report as text; ``against`` (an override such as ``model=hidden_512``) adds the
    per-key differences from that config."""
    covariates = ", ".join(f"{key} ({n})" for key, n in report.covariates.items()) or "none"
    lines = [
        f"{report.model_name} model {report.path} (saved by scvi-tools {report.scvi_version})",
        f"read with: {report.loader}",
        f"genes: {_first(report.genes)}",
        f"batch categories: {_first(report.batch_categories)}",
        f"categorical covariates: {covariates}",
    ]
    for key, value in report.settings().items():
        note = NOTES.get(key, {}).get(value)
        lines.append(
            f"  {key:<25} {value!s:<8} {report.sources[key]}" + (f"; {note}" if note else "")
        )
    lines.append(f"parameters: {report.n_parameters:,}")
    if report.disagreements:
        lines.append("DISAGREEMENTS (the weights win):")
        lines += [f"  - {line}" for line in report.disagreements]
    else:
        lines.append("weights, init params and registry agree")
    lines.append(f"matches conf/model: {', '.join(matching_configs(report)) or 'none'}")
    if against:
        diff = differences(report, compose_models([against])[0])
        lines.append(f"differences from {against}:" + ("" if diff else " none"))
        lines += [
            f"  {key}: model {ours!r}, config {theirs!r}" for key, (ours, theirs) in diff.items()
        ]
    return "\n".join(lines)
