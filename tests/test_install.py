"""A non-editable install finds its configs (issue 11): the wheel, installed into a fresh venv,
runs the main job (``train.py`` from the checkout, ``scvi-sweep-train`` from another folder) and
composes ``train`` from another folder.

The fresh venv gets its dependencies from this one's site-packages (a ``.pth`` line, which does
not run that folder's own ``.pth`` files, so the editable install of scvi-sweep stays out); the
tests check that ``sweep`` is imported from the wheel's copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sweep import metric_names, run_folder
from sweep.paths import REPO_ROOT

pytestmark = pytest.mark.slow

#: a short run of the main job on the demo data: one epoch, metrics files only, no scoring
SHORT_RUN = ["trainer.max_epochs=1", "logger=none", "evaluation=none"]

#: run in the fresh venv from another folder: where sweep and its configs are, and a composed model
COMPOSE_FROM_PACKAGE = """
import json
import sweep
from hydra import compose, initialize_config_dir
from sweep.config.schema import register_schema
from sweep.paths import CONF_DIR, REPO_ROOT, reports_dir

register_schema()
with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
    model = compose("train", overrides=["model=hidden_512"]).model
print(json.dumps({
    "sweep": sweep.__file__,
    "conf_dir": str(CONF_DIR),
    "repo_root": REPO_ROOT and str(REPO_ROOT),
    "reports_dir": str(reports_dir()),
    "model": {"n_hidden": model.n_hidden, "n_latent": model.n_latent},
}))
"""


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``command`` in ``cwd`` with no PYTHONPATH (nothing but the venv decides what imports),
    and ``env`` added to the environment."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | env
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def assert_trained(run_dir: Path) -> None:
    """``run_dir`` holds what one finished epoch of the main job writes."""
    metrics = run_folder.read_metrics(run_dir)
    assert metrics is not None, f"no {run_folder.METRICS_FILE} in {run_dir}"
    assert (run_dir / run_folder.LOG_FILE).is_file()
    assert (run_dir / run_folder.MODEL_DIR / "model.pt").is_file()
    history = run_folder.read_table(run_dir, run_folder.HISTORY_FILE)
    assert list(history[metric_names.EPOCH]) == [1]


def site_packages(python: Path) -> Path:
    """The purelib folder of the interpreter ``python``."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(run([str(python), "-c", code], Path.cwd()).stdout.strip())


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv with the wheel built from this checkout installed; its python."""
    tmp = tmp_path_factory.mktemp("install")
    pip = [sys.executable, "-m", "pip"]
    built = run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp), "."], REPO_ROOT
    )
    assert built.returncode == 0, built.stderr
    venv = tmp / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp).returncode == 0
    python = venv / "bin" / "python"
    (wheel,) = tmp.glob("scvi_sweep-*.whl")
    installed = run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], tmp)
    assert installed.returncode == 0, installed.stderr
    # after the install, so pip never sees this venv's (editable) scvi-sweep
    (site_packages(python) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_train_py_from_the_checkout_composes_with_the_installed_wheel(wheel_venv):
    conf_dir = site_packages(wheel_venv) / "sweep" / "conf"
    imported = run([str(wheel_venv), "-c", "import sweep; print(sweep.__file__)"], REPO_ROOT)
    assert Path(imported.stdout.strip()) == conf_dir.parent / "__init__.py"
    job = run([str(wheel_venv), "train.py", "--cfg", "job", "model=hidden_512"], REPO_ROOT)
    assert job.returncode == 0, job.stderr
    assert "n_hidden: 512" in job.stdout and "n_latent: 50" in job.stdout
    searchpath = run([str(wheel_venv), "train.py", "--info", "searchpath"], REPO_ROOT)
    assert f"file://{conf_dir}" in searchpath.stdout, searchpath.stdout + searchpath.stderr


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory) -> str:
    """The demo data's cache for the runs of this module (built by the first, reused after)."""
    return str(tmp_path_factory.mktemp("demo_cache"))


def test_the_main_job_runs_from_the_checkout_with_the_installed_wheel(
    wheel_venv, demo_cache, tmp_path
):
    command = [str(wheel_venv), "train.py", *SHORT_RUN, f"hydra.run.dir={tmp_path / 'run'}"]
    job = run(command, REPO_ROOT, SCVI_SWEEP_CACHE=demo_cache)
    assert job.returncode == 0, job.stderr[-3000:]
    assert_trained(tmp_path / "run")


def test_the_installed_command_runs_the_main_job_from_another_folder(
    wheel_venv, demo_cache, tmp_path
):
    job = run(
        [str(wheel_venv.parent / "scvi-sweep-train"), *SHORT_RUN],
        tmp_path,
        SCVI_SWEEP_CACHE=demo_cache,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs").glob("*/runs/*")  # Hydra's run folder, in this folder
    assert_trained(run_dir)


def test_the_installed_package_finds_its_configs_from_another_folder(wheel_venv, tmp_path):
    result = run([str(wheel_venv), "-c", COMPOSE_FROM_PACKAGE], tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    package = site_packages(wheel_venv) / "sweep"
    assert found["sweep"] == str(package / "__init__.py")
    assert found["conf_dir"] == str(package / "conf")
    assert found["repo_root"] is None
    assert found["reports_dir"] == str(tmp_path / "multirun_reports")
    assert found["model"] == {"n_hidden": 512, "n_latent": 50}
    # the package's own Hydra entry point (python -m) composes its config there too
    prepare = run(
        [
            str(wheel_venv),
            "-m",
            "sweep.cli.prepare_command",
            "--cfg",
            "job",
            "source=a",
            "output=b",
        ],
        tmp_path,
    )
    assert prepare.returncode == 0, prepare.stderr
    assert "n_top_genes: 8000" in prepare.stdout
