"""model=czi_128 against CZI's released module, and every model key read back from the module."""

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sweep.config.schema import register_schema
from sweep.model.build import build_scvi
from sweep.paths import CONF_DIR

REFERENCE = Path(__file__).parent / "data" / "czi_2025-01-30_module.txt"
LAYER = re.compile(r"^\((?P<name>[^)]+)\): (?P<kind>\w+)\((?P<args>.*)\)?$")


def layers(printed: str) -> list[tuple]:
    """(name, kind, sizes...) for every leaf layer of a printed torch module, in print order.

    The reference text was re-formatted by hand (", " turned into spaces and BatchNorm momentum
    digits lost in the z_encoder), so only layer kinds, sizes and dropout rates are compared.
    """
    out = []
    for line in printed.splitlines():
        match = LAYER.match(line.strip())
        if not match:
            continue
        kind, args = match["kind"], match["args"]
        numbers = re.findall(r"(in_features|out_features|p|eps)=([\d.e-]+)", args)
        sizes = [f"{key}={float(value):g}" for key, value in numbers]
        if kind == "BatchNorm1d":
            n_features = int(re.match(r"\d+", args).group())
            sizes.insert(0, f"n={n_features}")
        out.append((match["name"], kind, *sizes))
    return out


def compose_train(*overrides: str):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_czi_128_has_exactly_the_released_layers():
    cfg = compose_train("model=czi_128")
    genes = [f"ENSG{i:011d}" for i in range(8000)]
    batches = [f"b{i}" for i in range(11108)]
    module = build_scvi(genes, batches, {}, cfg.model).module
    reference = layers(REFERENCE.read_text())
    built = layers(str(module))
    assert len(reference) == 41  # containers and leaves
    assert built == reference
    # parameter count implied by the printed layers: Linear in*out+out, BatchNorm 2n
    expected = 0
    for _, kind, *sizes in reference:
        values = dict(s.split("=") for s in sizes)
        if kind == "Linear":
            expected += int(float(values["in_features"]) + 1) * int(float(values["out_features"]))
        elif kind == "BatchNorm1d":
            expected += 2 * int(values["n"])
    # + px_r, the per-gene dispersion (dispersion="gene"): a bare parameter, not a printed layer
    assert tuple(module.px_r.shape) == (8000,)
    assert sum(p.numel() for p in module.parameters()) == expected + 8000


def test_hidden_512_differs_from_czi_128_only_in_width():
    cfg = compose_train("model=hidden_512")
    module = build_scvi([f"g{i}" for i in range(100)], ["a", "b"], {}, cfg.model).module
    assert module.z_encoder.encoder.fc_layers[0][0].out_features == 512
    assert OmegaConf.to_container(cfg.model) == {
        **OmegaConf.to_container(compose_train("model=czi_128").model),
        "n_hidden": 512,
    }


def _read_back(module) -> dict:
    """Every model key, read from the built VAE (not from the config)."""
    encoder_layers = module.z_encoder.encoder.fc_layers
    decoder_first = module.decoder.px_decoder.fc_layers[0]
    norm_kinds = {
        part: {type(m).__name__ for m in layers_.modules()}
        for part, layers_ in (("encoder", encoder_layers), ("decoder", module.decoder.px_decoder))
    }

    def norm(kind):
        where = [p for p in ("encoder", "decoder") if kind in norm_kinds[p]]
        return {0: "none", 2: "both"}.get(len(where), where[0] if where else "none")

    return {
        "n_hidden": encoder_layers[0][0].out_features,
        "n_latent": module.n_latent,
        "n_layers": len(encoder_layers),
        "dropout_rate": next(
            m.p for m in encoder_layers.modules() if isinstance(m, torch.nn.Dropout)
        ),
        "dispersion": module.dispersion,
        "gene_likelihood": module.gene_likelihood,
        "latent_distribution": module.latent_distribution,
        "encode_covariates": module.encode_covariates,
        # deep injection: the second decoder layer takes latent width + batch one-hot
        "deeply_inject_covariates": module.decoder.px_decoder.fc_layers[1][0].in_features
        > module.decoder.px_decoder.fc_layers[0][0].out_features,
        "use_batch_norm": norm("BatchNorm1d"),
        "use_layer_norm": norm("LayerNorm"),
        "use_observed_lib_size": module.use_observed_lib_size,
        "_decoder_in": decoder_first[0].in_features,
    }


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [
            "model.n_hidden=64",
            "model.n_latent=7",
            "model.n_layers=3",
            "model.dropout_rate=0.25",
            "model.dispersion=gene-batch",
            "model.gene_likelihood=zinb",
            "model.latent_distribution=ln",
            "model.encode_covariates=true",
            "model.deeply_inject_covariates=false",
            "model.use_batch_norm=encoder",
            "model.use_layer_norm=decoder",
            "model.use_observed_lib_size=false",
        ],
    ],
)
def test_every_model_key_reaches_the_module(overrides):
    cfg = compose_train("model=czi_128", *overrides)
    module = build_scvi(
        [f"g{i}" for i in range(50)], ["a", "b", "c"], {"assay": ["x", "y"]}, cfg.model
    ).module
    seen = _read_back(module)
    decoder_in = seen.pop("_decoder_in")
    assert seen == OmegaConf.to_container(cfg.model)
    assert decoder_in == cfg.model.n_latent + 3 + 2  # latent + batch one-hot + covariate one-hot
