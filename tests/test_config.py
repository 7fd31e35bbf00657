"""Bad config values and unknown keys stop `train.py` at once: one line naming the key and what
it accepts, no traceback, no run folder (issue 10, defect 5)."""

import pytest

from sweep.cli.train_command import check_command_line
from sweep.config.schema import ConfigError, schema_keys
from sweep.paths import CONF_DIR
from test_train import run_train


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["data.validation_fraction=1.5"], "data.validation_fraction=1.5 must lie in [0.0, 0.9]"),
        (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 must lie in [1, inf]"),
        # one bad value of a sweep stops the whole sweep before its first job
        (["-m", "trainer.max_epochs=2,-1"], "trainer.max_epochs=-1 must lie in [1, inf]"),
        # a value that only the composed config shows (an interpolation): the config callback
        (["trainer.max_epochs=${seed}"], "trainer.max_epochs=0 must lie in [1, inf]"),
        (["model.gene_likelihood=gaussian"], "'gaussian' is not one of ['nb', 'zinb', 'poisson']"),
        (["trainer.max_epoch=3"], "unknown config key trainer.max_epoch: did you mean "),
        # Hydra itself suggests the `+`, and would then add the key and train 10 epochs
        (["+trainer.max_epoch=3"], "unknown config key trainer.max_epoch: did you mean "),
        (["+loader.num_worker=2"], "did you mean loader.num_workers?"),
        (["loader.num_workers=-2"], "loader.num_workers=-2 must be >= 0"),
    ],
)
def test_a_bad_value_or_unknown_key_is_one_line_and_leaves_no_run_folder(
    tmp_path, arguments, message
):
    result = run_train(*arguments, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "outputs").exists()  # Hydra made no run or sweep folder


def test_the_suggestion_is_the_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"did you mean trainer\.max_epochs\?"):
        check_command_line(["trainer.max_epoch=3"], CONF_DIR)
    with pytest.raises(ConfigError, match=r"did you mean evaluation\.n_cells\?"):
        check_command_line(["-m", "evaluation.n_cell=500,1000"], CONF_DIR)


@pytest.mark.parametrize(
    "arguments",
    [
        # the README's commands, and the kinds of override they use
        ["-m", "model=czi_128,hidden_512", "batch=czi_concat,dataset_donor,covariates"],
        ["experiment=architecture", "hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu"],
        ["-m", "hydra/sweeper=optuna", "plan.lr=tag(log,interval(1e-5,1e-2))"],
        ["-m", "model.n_latent=choice(10,30,50)", "trainer.max_epochs=range(1,4)"],
        ["hparams_search=scvi", "hydra.sweeper.n_jobs=8", "--cfg", "job"],
        ["+dataset.synthetic.n_datasets=3", "~evaluation.epochs", "++trainer.devices=2"],
        ["dataset=prepared", "dataset.path=/ssd/store", "loader=t4_n1std16", "trainer=gpu"],
    ],
)
def test_valid_command_lines_pass(arguments):
    assert check_command_line(arguments, CONF_DIR) is None  # raises ConfigError when refused


def test_schema_keys_follow_the_dataclasses():
    keys = schema_keys()
    assert keys["trainer.max_epochs"] is False  # a leaf
    # the demo's generator and prepare keys are typed (issue 20): each is a key of its own
    assert keys["dataset.synthetic"] is False and keys["dataset.synthetic.n_datasets"] is False
    assert keys["dataset.prepare.n_top_genes"] is False
    assert keys["model"] is False and "model.n_hidden" in keys


def test_a_typo_under_the_demo_generator_is_refused_with_the_nearest_key():
    with pytest.raises(ConfigError, match="did you mean dataset.synthetic.n_datasets"):
        check_command_line(["dataset.synthetic.n_dataset=3"], CONF_DIR)
