"""Secrets in the environment (W&B API key, tokens, passwords) never land in a run's files: the
run folder (config, .hydra/, log, metrics, the offline W&B run), the multirun report or the
console."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.config.overrides import SecretInOverride, refuse_secrets
from sweep.paths import REPO_ROOT

SECRETS = {
    "WANDB_API_KEY": "sk-test-0123456789abcdef0123456789abcdef01234567",
    "HF_TOKEN": "hf_testTOKENvalue4f9c2e",
    "GITHUB_TOKEN": "ghp_testTOKENvalue8d1a7b",
    "AWS_SECRET_ACCESS_KEY": "aws-test-SECRET-3b5e9d",
    "DB_PASSWORD": "pw-test-PASSWORD-61c0",
    "OPENAI_API_KEY": "sk-test-openai-KEY-a72e",
}
#: an env value deliberately put into the config (tags) through ${oc.env:...}: proves the scan
#: reads every kind of file it must (config, the binary W&B run, logs) and would see a leak
MARKER = ("SCVI_SWEEP_TEST_MARKER", "marker-value-5e21d7")


def files_under(*folders: Path) -> list[Path]:
    """Every regular file under ``folders`` (symbolic links not followed)."""
    found = []
    for folder in folders:
        for root, _, names in os.walk(folder):
            found += [Path(root, n) for n in names if Path(root, n).is_file()]
    return found


def holding(files: list[Path], value: str) -> list[str]:
    return [str(f) for f in files if value.encode() in f.read_bytes()]


@pytest.mark.slow
def test_environment_secrets_never_reach_run_files(store, tmp_path):
    sweep_dir, reports = tmp_path / "sweep", tmp_path / "reports"
    env = {
        **os.environ,
        **SECRETS,
        MARKER[0]: MARKER[1],
        "SCVI_SWEEP_CACHE": str(tmp_path / "cache"),
        "WANDB_SILENT": "true",
    }
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "-m",
        "dataset=prepared",
        f"dataset.path={store}",
        "logger=wandb",
        "trainer.max_epochs=1",
        "evaluation=none",
        "loader.num_workers=0",
        "trainer.enable_progress_bar=false",
        "save_model=false",
        f"tags=[${{oc.env:{MARKER[0]}}}]",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.callbacks.report.out_root={reports}",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:].decode()
    (tmp_path / "console.txt").write_bytes(done.stdout + done.stderr)

    files = files_under(sweep_dir, reports) + [tmp_path / "console.txt"]
    names = {f.name for f in files}
    assert {"config_resolved.yaml", "overrides.yaml", "hydra.yaml", "train.log"} <= names
    assert {"metrics.json", "multirun.yaml", "report.md", "debug-internal.log"} <= names
    wandb_runs = [f for f in files if f.suffix == ".wandb"]
    assert len(wandb_runs) == 1
    marked = holding(files, MARKER[1])
    assert str(sweep_dir / "0" / "config_resolved.yaml") in marked
    assert str(wandb_runs[0]) in marked
    leaks = {name: holding(files, value) for name, value in SECRETS.items()}
    assert leaks == {name: [] for name in SECRETS}


@pytest.mark.parametrize(
    "override, problem",
    [
        ("+wandb.api_key=abc", "names a secret"),
        ("+logger.token=xyz", "names a secret"),
        ("hydra.sweeper.storage=postgresql://me:hunter22@db:5432/optuna", "URL with a password"),
        ("tags=[run,hf_testTOKENvalue4f9c2e]", "holds $HF_TOKEN"),
        ("+wandb.api_key=${oc.env:WANDB_API_KEY}", "names a secret"),
        ("+note=${oc.env:HF_TOKEN}", "reads $HF_TOKEN"),  # resolved into config_resolved.yaml
    ],
)
def test_overrides_carrying_secrets_are_refused(monkeypatch, override, problem):
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    with pytest.raises(SecretInOverride, match=re.escape(problem)):
        refuse_secrets(["model=czi_128", override])


def test_ordinary_overrides_pass(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    ordinary = [
        "model=hidden_512",
        "plan.lr=0.001",
        "hydra.sweeper.storage=sqlite:///outputs/optuna/scvi.db",
        "hydra.sweeper.storage=postgresql://optuna@db:5432/studies",  # password: PGPASSWORD
        "dataset.path=${oc.env:HOME}/stores/census",
    ]
    refuse_secrets(ordinary)  # none refused ...
    with pytest.raises(SecretInOverride):  # ... while the same list with a secret is
        refuse_secrets([*ordinary, f"tags=[{SECRETS['HF_TOKEN']}]"])


def test_a_secret_override_stops_train_py_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train.py"),
            "+wandb.api_key=sk-test-typed-on-the-command-line",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "refusing override wandb.api_key" in done.stderr
    assert "sk-test-typed" not in done.stdout + done.stderr
    assert not run_dir.exists()
