"""The run folder's format (sweep.run_folder): the override parser; what is written reads back."""

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from sweep import metric_names, run_folder
from sweep.config.overrides import parse_override
from sweep.training.resume import without_resume


@pytest.mark.parametrize(
    ("override", "parsed"),
    [
        ("model=hidden_512", ("model", "hidden_512")),
        ("+note=x", ("note", "x")),
        ("++trainer.max_epochs=3", ("trainer.max_epochs", "3")),
        ("~logger", ("logger", "")),
        ("~seed=1", ("seed", "1")),
        ("optuna.storage=postgresql://u@h/db?a=b", ("optuna.storage", "postgresql://u@h/db?a=b")),
    ],
)
def test_an_override_parses_into_key_and_value(override, parsed):
    assert parse_override(override) == parsed


def test_resume_matches_runs_by_their_overrides_but_resume():
    assert without_resume(["seed=1", "+resume=true", "model=czi_128", "resume=false"]) == [
        "model=czi_128",
        "seed=1",
    ]


def test_metrics_and_tables_read_back_as_written(tmp_path):
    assert run_folder.read_metrics(tmp_path) is None  # not finished
    assert run_folder.read_table(tmp_path, run_folder.HISTORY_FILE) is None
    metrics = {metric_names.ELBO_VALIDATION: 1000.5, metric_names.CHOICES: {"model": "czi_128"}}
    run_folder.write_metrics(tmp_path, metrics)
    assert run_folder.read_metrics(tmp_path) == metrics
    history = pd.DataFrame({metric_names.EPOCH: [1, 2], metric_names.KL_WEIGHT: [0.5, 1.0]})
    run_folder.write_table(tmp_path, run_folder.HISTORY_FILE, history)
    pd.testing.assert_frame_equal(run_folder.read_table(tmp_path, run_folder.HISTORY_FILE), history)


def test_checkpoint_info_and_wandb_record_read_back(tmp_path):
    run_folder.checkpoint_file(tmp_path).parent.mkdir()
    run_folder.write_checkpoint_info(tmp_path, epoch=3, step=120)
    assert run_folder.read_checkpoint_info(tmp_path) == {"epoch": 3, "step": 120, "batches": 0}
    run_folder.write_checkpoint_info(tmp_path, epoch=3, step=125, batches=5)  # mid-epoch 4
    assert run_folder.read_checkpoint_info(tmp_path) == {"epoch": 3, "step": 125, "batches": 5}
    info = tmp_path / "checkpoints" / "last.json"
    info.write_text('{"epoch": 2, "step": 80}')  # written before mid-epoch checkpoints
    assert run_folder.read_checkpoint_info(tmp_path) == {"epoch": 2, "step": 80, "batches": 0}
    assert run_folder.checkpoint_file(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
    assert run_folder.read_wandb_record(tmp_path) is None
    run_folder.write_wandb_record(tmp_path, {"id": "abc", "group": None})
    assert run_folder.read_wandb_record(tmp_path) == {"id": "abc", "group": None}


def test_hydra_records_of_a_job_are_read(tmp_path):
    assert run_folder.read_overrides(tmp_path) is None  # no .hydra/: unknown
    (tmp_path / ".hydra").mkdir()
    (tmp_path / run_folder.OVERRIDES_FILE).write_text("")
    assert run_folder.read_overrides(tmp_path) == []
    (tmp_path / run_folder.OVERRIDES_FILE).write_text(yaml.safe_dump(["seed=1", "model=czi_128"]))
    assert run_folder.read_overrides(tmp_path) == ["seed=1", "model=czi_128"]
    choices = {"model": "czi_128", "experiment": None, "hydra/launcher": "basic"}
    (tmp_path / run_folder.HYDRA_FILE).write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}})
    )
    assert run_folder.read_hydra_choices(tmp_path) == {"model": "czi_128"}


def test_the_saved_config_has_its_interpolations_resolved(tmp_path):
    run_folder.write_config(tmp_path, OmegaConf.create({"a": 2, "b": "${a}"}))
    assert yaml.safe_load((tmp_path / run_folder.CONFIG_FILE).read_text()) == {"a": 2, "b": 2}
