"""sweep.model.saved (scvi-sweep-inspect-model) on saved SCVI models, built only or trained by
train.py: keys read from weights and init params, config matching, and refusal of model files that
would run code."""

import os
import pickle
import subprocess
import sys

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sweep.cli.inspect_command import main
from sweep.config.schema import register_schema
from sweep.data.store import read_manifest
from sweep.model.build import BATCH_COLUMN, build_scvi
from sweep.model.saved import (
    UnsafeModelFile,
    differences,
    format_report,
    inspect_model,
    load_model_file,
    matching_configs,
)
from sweep.paths import CONF_DIR
from sweep.training.job import fit

CZI_GENES = [f"ENSG{i:011d}" for i in range(8000)]
CZI_BATCHES = [f"b{i}" for i in range(11108)]
GENES = [f"g{i}" for i in range(40)]


def model_cfg(*overrides: str):
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides)).model


def save(folder, genes, batches, covariates, cfg):
    """Build (not train) an SCVI model, save it to ``folder``; its parameter count."""
    model = build_scvi(genes, batches, covariates, cfg)
    model.save(str(folder), overwrite=True)
    return sum(p.numel() for p in model.module.parameters())


@pytest.fixture(scope="module")
def czi(tmp_path_factory):
    """A model built like CZI's released one: folder, parameter count."""
    folder = tmp_path_factory.mktemp("czi")
    n_parameters = save(folder, CZI_GENES, CZI_BATCHES, {}, model_cfg("model=czi_128"))
    return folder, n_parameters


def test_czi_like_model_reads_as_released(czi):
    folder, n_parameters = czi
    report = inspect_model(folder)
    assert report.path == folder / "model.pt"
    assert "restricted unpickler" in report.loader
    assert report.genes == CZI_GENES
    assert (report.n_hidden, report.n_latent, report.n_layers) == (128, 50, 2)
    assert (report.gene_likelihood, report.dispersion, report.dropout_rate) == ("nb", "gene", 0.1)
    assert report.encode_covariates is False
    assert report.deeply_inject_covariates is True
    assert report.batch_categories == CZI_BATCHES
    assert report.covariates == {}
    assert report.use_observed_lib_size is True
    assert report.l_encoder_used is False
    assert report.n_parameters == n_parameters
    assert report.sources["n_hidden"] == "weights"
    assert report.sources["dropout_rate"] == "init params (not visible in weights)"
    assert report.disagreements == []
    assert matching_configs(report) == ["czi_128"]
    assert differences(report, model_cfg("model=hidden_512")) == {"n_hidden": (128, 512)}


def test_against_lists_exactly_the_n_hidden_difference(czi):
    text = format_report(inspect_model(czi[0]), against="model=hidden_512")
    assert "genes: 8000 (ENSG00000000000, ENSG00000000001," in text
    assert "batch categories: 11108 (b0, b1, b2, b3, b4, ...)" in text
    assert "l_encoder built but unused" in text
    assert "matches conf/model: czi_128\n" in text
    assert text.endswith("differences from model=hidden_512:\n  n_hidden: model 128, config 512")


def test_hidden_512_model(tmp_path):
    save(tmp_path, GENES, ["a", "b"], {}, model_cfg("model=hidden_512"))
    report = inspect_model(tmp_path)
    assert report.n_hidden == 512
    assert matching_configs(report) == ["hidden_512"]


def test_covariates_and_every_weight_visible_key(tmp_path):
    overrides = [
        "model=czi_128",
        "model.n_layers=3",
        "model.dispersion=gene-batch",
        "model.encode_covariates=true",
        "model.deeply_inject_covariates=false",
        "model.use_batch_norm=encoder",
        "model.use_observed_lib_size=false",
    ]
    cfg = model_cfg(*overrides)
    covariates = {"assay": ["10x 3' v2", "10x 3' v3", "Smart-seq2"], "suspension_type": ["c", "n"]}
    n_parameters = save(tmp_path, GENES, ["d1|x", "d1|y", "d2|x", "d3|z"], covariates, cfg)
    report = inspect_model(tmp_path)
    assert report.n_parameters == n_parameters  # library_log_means/vars are buffers
    assert report.covariates == {"assay": 3, "suspension_type": 2}
    assert report.batch_categories == ["d1|x", "d1|y", "d2|x", "d3|z"]
    assert report.settings() == OmegaConf.to_container(cfg)
    assert report.l_encoder_used is True
    for key in ("n_layers", "dispersion", "encode_covariates", "deeply_inject_covariates"):
        assert report.sources[key] == "weights"
    assert report.sources["use_observed_lib_size"] == "weights"
    assert report.disagreements == []
    assert matching_configs(report) == []
    assert "categorical covariates: assay (3), suspension_type (2)" in format_report(report)


def test_weights_and_init_params_disagreeing(tmp_path):
    save(tmp_path, GENES, ["a", "b"], {}, model_cfg("model=czi_128"))
    file = tmp_path / "model.pt"
    saved = torch.load(file, weights_only=False)  # our own file
    init = saved["attr_dict"]["init_params_"]
    init["non_kwargs"]["n_hidden"] = 512
    del init["kwargs"]["kwargs"]["use_layer_norm"]  # as when SCVI's signature did not name it
    torch.save(saved, file)

    report = inspect_model(file)
    assert report.n_hidden == 128
    assert report.disagreements == ["n_hidden: weights say 128, init params say 512"]
    assert report.use_layer_norm == "none"
    assert report.sources["use_layer_norm"].startswith("scvi-tools ")
    assert "DISAGREEMENTS" in format_report(report)


class RunsCode:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("write", ["torch.save", "pickle.dump"])
def test_a_pickle_that_runs_code_is_refused(tmp_path, write):
    marker = tmp_path / "ran"
    file = tmp_path / "model.pt"
    payload = {"model_state_dict": {}, "attr_dict": RunsCode(marker)}
    if write == "torch.save":
        torch.save(payload, file)
    else:
        file.write_bytes(pickle.dumps(payload))
    disallowed = f"{os.system.__module__}.system"

    with pytest.raises(UnsafeModelFile, match=f"^{file}: refused: disallowed global {disallowed} "):
        inspect_model(tmp_path)
    with pytest.raises(SystemExit, match=disallowed):
        main([str(file)])
    assert not marker.exists()
    # the payload is live: an unrestricted load runs it
    if write == "torch.save":
        torch.load(file, weights_only=False)
    else:
        pickle.loads(file.read_bytes())
    assert marker.exists()


def test_a_torchscript_archive_is_refused(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "model.pt")
    with pytest.raises(UnsafeModelFile, match="TorchScript"):
        inspect_model(tmp_path)


def test_cli_on_folder_and_file(czi, capsys):
    folder = czi[0]
    main([str(folder)])
    on_folder = capsys.readouterr().out
    main([str(folder / "model.pt"), "--against", "model=czi_128"])
    on_file = capsys.readouterr().out
    assert on_file == on_folder + "differences from model=czi_128: none\n"
    assert "read with: restricted unpickler" in on_folder
    assert "  n_hidden                  128      weights\n" in on_folder
    assert "matches conf/model: czi_128" in on_folder


#: train.py overrides for a fast run on the `store` fixture (no W&B, no scib scoring)
FAST = [
    "dataset=prepared",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "evaluation=none",
    "logger=none",
    "loader.num_workers=0",
]


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """A run folder written by sweep.training.job.fit (model=czi_128, one epoch): folder, model."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*FAST, f"dataset.path={store}"])
    model, _ = fit(cfg, run_dir)
    return run_dir, model


@pytest.mark.slow
def test_a_trained_model_reads_with_its_history(trained, store):
    run_dir, model = trained
    report = inspect_model(run_dir / "model")
    assert (report.n_hidden, report.n_latent, report.n_layers) == (128, 50, 2)
    assert report.genes == read_manifest(store).genes
    assert report.batch_categories == list(model.adata.obs[BATCH_COLUMN].cat.categories)
    assert report.n_parameters == sum(p.numel() for p in model.module.parameters())
    assert report.disagreements == []
    assert matching_configs(report) == ["czi_128"]
    # the history, rebuilt by the restricted unpickler, is the trained model's
    history = load_model_file(run_dir / "model" / "model.pt")["attr_dict"]["history_"]
    assert history.keys() == model.history.keys()
    for name, frame in model.history.items():
        pd.testing.assert_frame_equal(history[name], frame)


@pytest.mark.slow
def test_cli_on_a_trained_run(trained):
    model_dir = trained[0] / "model"
    done = subprocess.run(
        [sys.executable, "-m", "sweep.cli.inspect_command", str(model_dir)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"SCVI model {model_dir / 'model.pt'} ")
    assert "matches conf/model: czi_128" in done.stdout


@pytest.mark.slow
def test_the_model_genes_become_prepares_gene_list(trained, tmp_path):
    """``--genes FILE`` writes the model's genes in its order: the ``genes=`` list that prepares
    a store (and so a query) for that model, e.g. CZI's."""
    run_dir, model = trained
    listed = tmp_path / "genes.tsv"
    done = subprocess.run(
        [sys.executable, "-m", "sweep.cli.inspect_command", str(run_dir / "model")]
        + ["--genes", str(listed)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    genes = list(model.adata_manager.adata.var_names)
    assert listed.read_text().split("\n")[:-1] == genes
    assert done.stdout.rstrip().endswith(f"wrote the {len(genes):,} genes to {listed}")


class Calls:
    """Unpickling this calls ``function(*args)``."""

    def __init__(self, function, *args):
        self.call = function, args

    def __reduce__(self):
        return self.call


#: case -> (what unpickles into a call, given the marker file; pickle protocol; the global the
#: inspector names, as the file spells it: protocol 2 writes Python 2 names; whether a plain
#: torch.load then runs code that creates the marker)
PAYLOADS = {
    "os.system": (
        lambda marker: Calls(os.system, f"touch {marker}"),
        2,
        f"{os.system.__module__}.system",
        True,
    ),
    "eval": (
        lambda marker: Calls(eval, f"open({str(marker)!r}, 'w')"),
        2,
        "__builtin__.eval",
        True,
    ),
    "Popen": (
        lambda marker: Calls(subprocess.Popen, ["touch", marker]),
        2,
        "commands.Popen",
        True,
    ),
    "read_pickle": (
        lambda marker: Calls(pd.read_pickle, marker.with_name("inner.pkl")),
        2,
        "pandas.io.pickle.read_pickle",
        True,
    ),
    # a method is pickled as getattr(class, name) (protocol 2) or as a dotted name (protocol 4)
    "DataFrame.query": (
        lambda marker: Calls(pd.DataFrame.query, pd.DataFrame(), "a"),
        2,
        "__builtin__.getattr",
        False,
    ),
    "DataFrame.query-4": (
        lambda marker: Calls(pd.DataFrame.query, pd.DataFrame(), "a"),
        4,
        "pandas.core.frame.DataFrame.query",
        False,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(PAYLOADS))
def test_a_trained_model_with_code_in_it_is_refused(trained, tmp_path, case):
    """A real trained model.pt with one more history entry, one that would run code."""
    payload, protocol, disallowed, runs_code = PAYLOADS[case]
    marker = tmp_path / "ran"
    (tmp_path / "inner.pkl").write_bytes(pickle.dumps(Calls(os.system, f"touch {marker}")))
    saved = torch.load(trained[0] / "model" / "model.pt", weights_only=False)  # our own file
    saved["attr_dict"]["history_"]["evil"] = payload(marker)
    file = tmp_path / "model.pt"
    torch.save(saved, file, pickle_protocol=protocol)

    with pytest.raises(UnsafeModelFile, match=f"^{file}: refused: disallowed global {disallowed} "):
        inspect_model(file)
    with pytest.raises(SystemExit, match=disallowed):
        main([str(file)])
    assert not marker.exists()
    if runs_code:  # the payload is live: an unrestricted load runs it
        evil = torch.load(file, weights_only=False)["attr_dict"]["history_"]["evil"]
        if isinstance(evil, subprocess.Popen):
            evil.wait()
        assert marker.exists()


def test_setting_attributes_on_an_allowed_class_is_refused(tmp_path):
    """BUILD with state (None, {"probe": 1}) on pandas' Index class: setattr(Index, "probe", 1)."""
    file = tmp_path / "model.pt"
    file.write_bytes(
        b"\x80\x02cpandas.core.indexes.base\nIndex\nN}X\x05\x00\x00\x00probeK\x01s\x86b."
    )
    with pytest.raises(
        UnsafeModelFile, match="refused: the file sets attributes on <class 'pandas"
    ):
        inspect_model(file)
    assert not hasattr(pd.Index, "probe")
