"""Known-harmless library messages are silenced at their source; every other warning still shows
(issue 10, defect 8)."""

import logging
import warnings

import pytest
from omegaconf import OmegaConf

from sweep.config.schema import ModelConfig
from sweep.model.build import build_scvi
from sweep.training.job import fit
from sweep.training.quiet import HARMLESS_RECORDS, HARMLESS_WARNINGS, quiet_known_harmless
from test_train import compose_train

#: a warning about the user's data: never silenced
REAL = "Category 3 in adata.obs['batch'] has fewer than 3 cells"


def test_the_template_anndata_raises_no_small_category_warning():
    """The 2-cell template has 'fewer than 3 cells' in every category: not the data's fault."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_scvi(
            [f"ENSG{i:011d}" for i in range(20)],
            ["a", "b", "c"],
            {"assay": ["x", "y"]},
            OmegaConf.structured(ModelConfig),
        )
    assert not [w for w in caught if "fewer than 3 cells" in str(w.message)]


def test_harmless_warnings_are_dropped_and_others_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_harmless()
        quiet_known_harmless()  # twice: still one filter each
        for message, category, _ in HARMLESS_WARNINGS:
            warnings.warn(f"{message} and then some", category, stacklevel=1)
        warnings.warn(REAL, UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [REAL]


def test_harmless_log_records_are_dropped_and_others_kept(caplog):
    quiet_known_harmless()
    quiet_known_harmless()
    caplog.set_level(logging.INFO)
    for name, prefix in HARMLESS_RECORDS:
        logging.getLogger(name).info("%s: an advertisement", prefix)
        logging.getLogger(name).info("GPU available: False, used: False")
    names = {name for name, _ in HARMLESS_RECORDS}  # not what other tests' threads log meanwhile
    kept = [r.getMessage() for r in caplog.records if r.name in names]
    assert kept == ["GPU available: False, used: False"] * len(HARMLESS_RECORDS)
    assert all(len(logging.getLogger(name).filters) == 1 for name, _ in HARMLESS_RECORDS)


@pytest.mark.slow
def test_a_checkpointed_epoch_logs_nothing_from_lightnings_checkpoint_connector(
    store, tmp_path, caplog
):
    """Lightning logs "`weights_only` was not set" at every checkpoint that leaves it unsaid."""
    connector = "lightning.pytorch.trainer.connectors.checkpoint_connector"
    caplog.set_level(logging.INFO, logger=connector)
    quick = ["logger=none", "loader.num_workers=0", "save_model=false", "trainer.max_epochs=2"]
    fit(compose_train(store, *quick), tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert [r.getMessage() for r in caplog.records if r.name == connector] == []
