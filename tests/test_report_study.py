"""The study report from a hand-made Optuna study (trials added directly, run folders written by
hand): the importance caveat and digits, the demo-data note, the PCA baseline in words, and
figures that read at a glance with 3 trials or 20."""

import json
import re
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from sweep.report.entry import write_report
from sweep.report.study_report import (
    build_study_report,
    importances,
    load,
    plot_history,
    plot_importances,
    plot_intermediate,
    plot_pareto,
    plot_slices,
    trials_table,
)
from sweep.study.attrs import RUN_DIR
from test_report_figures import assert_readable

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

DISTRIBUTIONS = {
    "model.n_hidden": CategoricalDistribution([128, 256, 512]),
    "plan.lr": FloatDistribution(1e-4, 1e-2, log=True),
}


def run_dir(folder: Path, bio: float) -> Path:
    """A finished demo-data run folder scoring ``bio`` against a PCA baseline of 0.8."""
    folder.mkdir(parents=True)
    metrics = {
        "bio_conservation": bio,
        "pca_bio_conservation": 0.8,
        "choices": {"dataset": "demo", "model": "czi_128"},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def make_study_url(tmp_path: Path) -> str:
    """The storage URL of :func:`make_study` in ``tmp_path``."""
    return f"sqlite:///{tmp_path / 'study.db'}"


def make_study(tmp_path: Path, n_trials: int, objectives: int = 1) -> str:
    """A study of ``n_trials`` complete trials (the last one pruned) in a sqlite file; its
    storage URL."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    storage = make_study_url(tmp_path)
    directions = ["minimize", "maximize"][:objectives]
    study = optuna.create_study(study_name="s", storage=storage, directions=directions)
    study.set_metric_names(["elbo_validation", "integration_total"][:objectives])
    for i in range(n_trials):
        params = {"model.n_hidden": [128, 256, 512][i % 3], "plan.lr": 1e-4 * 1.2**i}
        values = [1000.0 - 3 * i + 20 * (i % 3), 0.5 + i / 100][:objectives]
        pruned = i == n_trials - 1 and objectives == 1
        folder = run_dir(tmp_path / "runs" / str(i), 0.6 + i / 100)
        trial = create_trial(
            state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
            params=params,
            distributions=DISTRIBUTIONS,
            values=None if pruned else values,
            intermediate_values={1: values[0] + 50, 2: values[0]},
            user_attrs={RUN_DIR: str(folder)},
        )
        study.add_trial(trial)
    return storage


def test_a_study_report_qualifies_its_importances_and_states_the_data_and_baseline(tmp_path):
    report = build_study_report("s", make_study(tmp_path, 4), tmp_path / "report")
    text = report.read_text()
    assert "fANOVA, from 3 complete trials" in text
    assert "Importances from fewer than ~20 trials are indicative only (as here)." in text
    table = text.split("## Parameter importances")[1].split("## Figures")[0]
    rows = [line for line in table.splitlines() if line.startswith("| model") or "plan.lr" in line]
    assert len(rows) == 2
    for row in rows:
        (value,) = [c.strip() for c in row.strip("|").split("|")][1:]
        assert len(re.sub(r"^0\.0*|\.|e.*$", "", value)) <= 2, value  # 2 significant digits
    assert "**Demo data**" in text
    assert (
        "- **bio conservation**: all 3 trials score 0.600-0.620, below the PCA baseline's 0.800"
    ) in text


@pytest.mark.parametrize("n_trials", [3, 20])
def test_study_figures_lie_inside_their_images_with_integer_trials_and_a_colour_bar(
    tmp_path, n_trials
):
    study = load("s", make_study(tmp_path, n_trials))
    table = trials_table(study)
    history = plot_history(study, table)
    assert all(float(t).is_integer() for t in history.axes[0].get_xticks())
    slices = plot_slices(study, table)
    assert any(ax.get_ylabel() == "trial number" for ax in slices.axes)  # the colour bar
    imp, _ = importances(study)
    figures = {
        "history.png": history,
        "slices.png": slices,
        "intermediate.png": plot_intermediate(study),
        "importances.png": plot_importances(imp, n_trials - 1),
    }
    for name, fig in figures.items():
        assert_readable(fig, tmp_path / name)
    assert all(ax.get_xlim()[0] == 0 for ax in figures["importances.png"].axes)


def test_a_pareto_figure_lies_inside_its_image(tmp_path):
    study = load("s", make_study(tmp_path, 20, objectives=2))
    assert_readable(plot_pareto(study, list(study.best_trials)), tmp_path / "pareto.png")


def test_a_study_whose_run_folders_are_elsewhere_says_so(tmp_path):
    storage = make_study(tmp_path, 3)
    for folder in (tmp_path / "runs").iterdir():
        (folder / "metrics.json").unlink()
    text = build_study_report("s", storage, tmp_path / "report").read_text()
    assert "Run folders not readable here: no data set or PCA baseline." in text


def test_a_study_report_never_overwrites_another_studys_of_the_same_name(tmp_path):
    root = tmp_path / "reports"
    one = write_report(study="s", storage=make_study(tmp_path / "a", 3), out_root=root)
    two = write_report(study="s", storage=make_study(tmp_path / "b", 3), out_root=root)
    assert (one, two) == (root / "s" / "report.md", root / "s-2" / "report.md")
    assert write_report(study="s", storage=make_study_url(tmp_path / "a"), out_root=root) == one
