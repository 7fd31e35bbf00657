"""trainer.batch_injection: the column lookup (sweep.model.batch_injection) computes what
scvi-tools' one-hot product computes, with the same parameters, gradients and saved model."""

from __future__ import annotations

import copy

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from scvi import REGISTRY_KEYS
from scvi.nn import FCLayers

from sweep import run_folder
from sweep.config import schema
from sweep.data.store import read_manifest
from sweep.model.batch_injection import LookupFCLayers, set_batch_injection
from sweep.model.build import BATCH_COLUMN, build_scvi
from sweep.training.job import fit

GENES = [f"g{i}" for i in range(40)]
BATCHES = [f"b{i}" for i in range(5)]
COVARIATES = {"assay": ["x", "y", "z"], "suspension_type": ["cell", "nucleus"]}
CELLS = 24


def _pair(*overrides: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same VAE (2 categorical covariates) built with one_hot and with lookup."""
    cfg = schema.compose_train(
        ["model=czi_128", "model.n_hidden=16", "model.n_latent=6", *overrides]
    )
    scvi.settings.seed = 0
    one_hot = build_scvi(GENES, BATCHES, COVARIATES, cfg.model, batch_injection="one_hot").module
    lookup = build_scvi(GENES, BATCHES, COVARIATES, cfg.model, batch_injection="lookup").module
    lookup.load_state_dict(one_hot.state_dict())
    return one_hot, lookup


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    covariates = [
        torch.randint(0, len(c), (CELLS, 1), generator=generator) for c in COVARIATES.values()
    ]
    return {
        REGISTRY_KEYS.X_KEY: torch.poisson(
            torch.full((CELLS, len(GENES)), 3.0), generator=generator
        ),
        REGISTRY_KEYS.BATCH_KEY: torch.randint(0, len(BATCHES), (CELLS, 1), generator=generator),
        REGISTRY_KEYS.LABELS_KEY: torch.zeros(CELLS, 1),
        REGISTRY_KEYS.CAT_COVS_KEY: torch.cat(covariates, dim=1),
    }


def _close(a: torch.Tensor, b: torch.Tensor, what: str, scale: float | None = None) -> None:
    """Equal to float rounding: rtol 1e-5, and 1e-5 of ``scale`` (default: ``a``'s largest
    magnitude) absolute, for elements that are rounding noise around 0 (the gradient of a
    bias that a batch norm follows)."""
    scale = scale or float(a.detach().abs().max()) or 1.0
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}")


def _run(module: torch.nn.Module, tensors: dict, train: bool) -> tuple[dict, dict]:
    """Outputs and every parameter's gradient of one loss, the RNG seeded (dropout, sampling)."""
    module.train(train)
    module.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    inference, generative, loss = module(tensors)
    loss.loss.backward()
    outputs = {
        "loss": loss.loss.detach(),
        "z": inference["z"].detach(),
        "px.mu": generative["px"].mu.detach(),
        "px.theta": generative["px"].theta.detach(),
    }
    return outputs, {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "overrides",
    [
        [],  # CZI's: deep injection into both decoder layers, batch norm
        ["model.deeply_inject_covariates=false"],  # the first decoder layer only
        ["model.encode_covariates=true", "model.n_layers=3"],  # encoders inject too
        ["model.use_batch_norm=none", "model.use_layer_norm=both"],
        ["model.use_batch_norm=encoder", "model.use_layer_norm=decoder", "model.dropout_rate=0"],
    ],
    ids=["czi", "shallow", "encode", "layer_norm", "mixed_norms"],
)
def test_lookup_gives_the_one_hot_outputs_and_gradients(overrides, train):
    one_hot, lookup = _pair(*overrides)
    tensors = _tensors()
    expected_outputs, expected_grads = _run(one_hot, tensors, train)
    outputs, grads = _run(lookup, tensors, train)
    for name, value in expected_outputs.items():
        _close(outputs[name], value, name)
    assert set(grads) == set(expected_grads)
    injected = {n for n, _ in one_hot.named_parameters() if n.startswith("decoder.px_decoder")}
    assert injected <= set(grads)  # (l_encoder and the zero-inflation head are unused with nb)
    largest = max(float(g.abs().max()) for g in expected_grads.values())
    for name, grad in expected_grads.items():
        _close(grads[name], grad, name, scale=largest)
    if train and "model.use_batch_norm=none" not in overrides:  # running statistics alike
        for (name, a), (_, b) in zip(one_hot.named_buffers(), lookup.named_buffers(), strict=True):
            _close(b.float(), a.float(), name)


def test_the_gradient_of_absent_categories_is_zero_as_with_one_hot():
    one_hot, lookup = _pair()
    tensors = _tensors()
    tensors[REGISTRY_KEYS.BATCH_KEY][:] = 2  # every cell in batch b2
    _, grads = _run(lookup, tensors, train=True)
    _, expected = _run(one_hot, tensors, train=True)
    for layer in range(2):
        name = f"decoder.px_decoder.fc_layers.Layer {layer}.0.weight"
        n_x = grads[name].shape[1] - len(BATCHES) - 5  # 5: the two covariates' one-hots
        batch_columns = grads[name][:, n_x : n_x + len(BATCHES)]
        assert batch_columns[:, 2].abs().sum() > 0
        assert (batch_columns[:, [0, 1, 3, 4]] == 0).all()
        _close(grads[name], expected[name], name)


def test_a_3d_input_and_continuous_and_one_hot_covariates_as_fclayers():
    """FCLayers as the samples of z reach it (samples, cells, n_in), with continuous
    covariates, a covariate of one category (ignored) and one handed over already one-hot."""
    torch.manual_seed(0)
    for inject in (True, False):
        reference = FCLayers(
            n_in=6, n_out=5, n_cat_list=[4, 1, 3], n_cont=2, n_layers=3, n_hidden=7,
            inject_covariates=inject, use_layer_norm=True,
        )  # fmt: skip
        reference.train()
        lookup = copy.deepcopy(reference)
        lookup.__class__ = LookupFCLayers
        x = torch.randn(2, CELLS, 6, requires_grad=True)
        cont = torch.randn(CELLS, 2)
        first = torch.randint(0, 4, (CELLS, 1))
        third = torch.nn.functional.one_hot(torch.randint(0, 3, (CELLS,)), 3)
        args = (first, torch.zeros(CELLS, 1, dtype=torch.long), third, None)  # None: like y
        torch.manual_seed(1)  # the same dropout masks
        expected = reference(x, *args, cont=cont)
        (grad_x_expected,) = torch.autograd.grad(expected.sum(), x)
        torch.manual_seed(1)
        out = lookup(x, *args, cont=cont)
        (grad_x,) = torch.autograd.grad(out.sum(), x)
        _close(out, expected, "output")
        _close(grad_x, grad_x_expected, "grad x")
        with pytest.raises(ValueError, match="doesn't match init"):
            lookup(x, first)
        with pytest.raises(RuntimeError, match="outside 0..3"):
            lookup(x, first + 4, *args[1:], cont=cont)


def test_bf16_autocast_and_scvi_tools_query_hooks_as_with_one_hot():
    """Under autocast (Lightning's bf16-mixed) the output has the one-hot path's dtype and
    value to bf16 rounding; scvi-tools' query-training hooks on the weights (only the
    covariate columns learn) mask the lookup's gradient as they mask the one-hot's."""
    torch.manual_seed(0)
    reference = FCLayers(n_in=6, n_out=5, n_cat_list=[4, 3], n_layers=2, dropout_rate=0)
    lookup = copy.deepcopy(reference)
    lookup.__class__ = LookupFCLayers
    x = torch.randn(CELLS, 6)
    cats = (torch.randint(0, 4, (CELLS, 1)), torch.randint(0, 3, (CELLS, 1)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, out = reference(x, *cats), lookup(x, *cats)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)

    for module in (reference, lookup):
        module.set_online_update_hooks()
        module(x, *cats).square().sum().backward()
    for (name, a), (_, b) in zip(
        reference.named_parameters(), lookup.named_parameters(), strict=True
    ):
        _close(b.grad, a.grad, name, scale=float(a.grad.abs().max()) or 1.0)
    first = lookup.fc_layers[0][0].weight.grad
    assert (first[:, :6] == 0).all() and first[:, 6:].abs().sum() > 0


def test_same_state_and_printout_and_the_switch():
    one_hot, lookup = _pair()
    assert type(one_hot.decoder.px_decoder) is FCLayers
    assert type(lookup.decoder.px_decoder) is LookupFCLayers
    assert type(lookup.z_encoder.encoder) is FCLayers  # no covariates: left as it is
    assert str(lookup) == str(one_hot)
    shapes = {k: v.shape for k, v in one_hot.state_dict().items()}
    assert {k: v.shape for k, v in lookup.state_dict().items()} == shapes
    assert [n for n, _ in lookup.named_buffers()] == [n for n, _ in one_hot.named_buffers()]
    assert set_batch_injection(lookup, "one_hot") == ["decoder.px_decoder"]
    assert type(lookup.decoder.px_decoder) is FCLayers
    with pytest.raises(ValueError, match="not one of"):
        set_batch_injection(lookup, "dense")
    copied = copy.deepcopy(one_hot)
    set_batch_injection(copied, "lookup")
    assert type(copy.deepcopy(copied).decoder.px_decoder) is LookupFCLayers


def test_the_config_key():
    assert schema.compose_train([]).trainer.batch_injection == "lookup"
    assert (
        schema.compose_train(["trainer.batch_injection=one_hot"]).trainer.batch_injection
        == "one_hot"
    )
    with pytest.raises(schema.ConfigError, match=r"trainer.batch_injection='dense'"):
        schema.validate(schema.compose_train(["trainer.batch_injection=dense"]))


def _cells(model: scvi.model.SCVI, n: int = 60) -> anndata.AnnData:
    """``n`` cells of random counts on the model's genes, batches spread over its categories."""
    genes = model.adata.var_names
    categories = list(model.adata.obs[BATCH_COLUMN].cat.categories)
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(1.0, (n, len(genes))).astype(np.float32))
    obs = pd.DataFrame(index=[f"cell-{i}" for i in range(n)])
    obs[BATCH_COLUMN] = pd.Categorical(
        [categories[i % len(categories)] for i in range(n)], categories=categories
    )
    return anndata.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=genes))


@pytest.mark.slow
def test_a_model_trained_with_lookup_saves_and_loads_as_scvi_tools_own(tiny_store, tmp_path):
    run_dir = tmp_path / "run"
    cfg = schema.compose_train(
        [
            "dataset=prepared",
            f"dataset.path={tiny_store}",
            "trainer.enable_progress_bar=false",
            "evaluation=none",
            "logger=none",
            "trainer.max_epochs=1",
            "loader.num_workers=0",
        ]
    )
    assert cfg.trainer.batch_injection == "lookup"
    model, _ = fit(cfg, run_dir)
    assert type(model.module.decoder.px_decoder) is LookupFCLayers  # through model.train
    adata = _cells(model)
    latent = model.get_latent_representation(adata)

    def decoded(vae: scvi.model.SCVI) -> torch.Tensor:
        """The decoder's means on the latent means (no sampling), every batch injected."""
        vae.module.eval()
        z = torch.as_tensor(latent)
        codes = torch.arange(len(adata)).remainder(vae.summary_stats.n_batch).unsqueeze(1)
        with torch.no_grad():
            out = vae.module.generative(z, torch.zeros(len(adata), 1), codes)
        return out["px"].mu

    model_dir = run_dir / run_folder.MODEL_DIR
    loaded = scvi.model.SCVI.load(str(model_dir), adata=adata)
    assert type(loaded.module.decoder.px_decoder) is FCLayers  # scvi-tools' plain module
    saved, trained = loaded.module.state_dict(), model.module.state_dict()
    assert list(saved) == list(trained)
    for key, value in trained.items():
        assert torch.equal(saved[key], value), key
    np.testing.assert_allclose(loaded.get_latent_representation(adata), latent, rtol=1e-5)
    _close(decoded(loaded), decoded(model), "decoder means, loaded (one_hot) vs trained (lookup)")

    # the checkpoint holds the same keys: scvi-tools' module loads it strictly
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    weights = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    loaded.module.load_state_dict(weights, strict=True)

    # the seed's snippet: a query with batches the model never saw
    query = _cells(model, n=30)
    query.obs[BATCH_COLUMN] = pd.Categorical(["new-donor"] * len(query))
    scvi.model.SCVI.prepare_query_anndata(query, str(model_dir))
    vae_q = scvi.model.SCVI.load_query_data(query, str(model_dir))
    vae_q.is_trained = True
    assert np.isfinite(vae_q.get_latent_representation()).all()
    assert read_manifest(tiny_store).n_genes == model.adata.n_vars


def test_the_benchmark_alternates_every_setting_and_reports_ratios(capsys):
    """benchmarks.batch_injection at toy sizes (its arithmetic on made-up times, then a run):
    every setting measured in every round, ratios per implementation, the GPU case's table."""
    from benchmarks import batch_injection as bench
    from benchmarks import gpu

    made_up = {(bench.ONE_HOT, 20): 0.4, (bench.ONE_HOT, 11108): 0.6}
    made_up |= {(bench.LOOKUP, 20): 0.4, (bench.LOOKUP, 11108): 0.42}
    settings = []
    for (implementation, categories), seconds in made_up.items():
        setting = bench.Setting(implementation, categories, step=None, batches=[])
        setting.rounds = {p: [seconds, 2 * seconds, seconds] for p in ("step", *bench.PHASES)}
        settings.append(setting)
    rows = {(r["implementation"], r["categories"]): r for r in bench.summary(settings)}
    assert rows[(bench.ONE_HOT, 11108)]["ratio"] == pytest.approx(1.5)
    assert rows[(bench.LOOKUP, 11108)]["paired"] == pytest.approx((1.05, 1.05, 1.05))
    assert rows[(bench.LOOKUP, 20)]["ms"] == pytest.approx(400)
    assert rows[(bench.LOOKUP, 20)]["ms_max"] == pytest.approx(800)
    lines = gpu.injection_table([{"precision": "32-true", "settings": list(rows.values())}])
    assert (
        lines[2]
        == "| one_hot | 20 | 32-true | 400.0 | 400.0-800.0 | 1.000x | 1.000x (1.000-1.000) |"
    )

    argv = ["--genes", "30", "--batch-size", "16", "--categories", "3", "40"]
    bench.main([*argv, "--rounds", "2", "--warmup", "1", "--repeats", "2"])
    text = capsys.readouterr().out
    table = [line for line in text.splitlines() if line.startswith(("| one_hot |", "| lookup |"))]
    assert [line.split(" | ")[:2] for line in table] == [
        ["| one_hot", "3"],
        ["| one_hot", "40"],
        ["| lookup", "3"],
        ["| lookup", "40"],
    ]
    assert f"python -m benchmarks.batch_injection {' '.join(argv)}" in text
    assert "| Adam step over the one-hot columns' weights (2 x 128 x 40) |" in text
