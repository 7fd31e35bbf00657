"""Reports that answer first (issue 23, item 6): each report opens with its answer in words; the
verdicts say which rest on unhealthy runs; speed is compared only when it was steady; a value
that never settled says so; numbers are formatted for people; no machine paths; the terms link to
docs/glossary.md. Hand-made sweep, run and study folders: no training."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from sweep.metric_names import LOSS_CHANGE, STILL_FALLING, WARMUP
from sweep.paths import REPO_ROOT
from sweep.report import glossary
from sweep.report.embedding import plot_embedding
from sweep.report.glossary import GLOSSARY_PATH, TERMS, anchor, relative_link
from sweep.report.multirun import build_report, planned_figures
from sweep.report.numbers import duration, durations, general, loss, score, whole
from sweep.report.render import shown_command, shown_storage
from sweep.report.run_report import plot_curves, write_run_report
from sweep.report.study_report import build_study_report
from sweep.report.sweep_folder import load_sweep
from test_report import make_sweep, scored_sweep, verdict_rows
from test_report_study import make_study, make_study_url

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

UNFINISHED = "the KL warm-up had not finished: the last epoch trained at KL weight 0.45 of 1"
FALLING = "the validation loss (negative ELBO) was still falling by 4.2% an epoch at the end"


def answer(report: Path) -> str:
    """The report's opening paragraph (the one after its title)."""
    return report.read_text().split("\n\n")[1]


def three_seeds(bio_ref: float, bio_level: float, noise=(0, 0.01, -0.01)) -> dict:
    """Bio conservation of czi_128 and hidden_512 at seeds 0, 1, 2."""
    bio = {("czi_128", s): bio_ref + d for s, d in zip("012", noise, strict=True)}
    bio |= {("hidden_512", s): bio_level + d for s, d in zip("012", noise, strict=True)}
    return bio


def set_metrics(sweep: Path, jobs, **entries) -> None:
    """Add ``entries`` to the metrics.json of each job of ``jobs``."""
    for job in jobs:
        path = sweep / str(job) / "metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **entries}))


def healthy(sweep: Path) -> Path:
    """Give every job of the sweep a health record with no finding, as a converged job has."""
    jobs = [int(p.name) for p in sweep.iterdir() if (p / "metrics.json").is_file()]
    set_metrics(sweep, jobs, health={}, **{LOSS_CHANGE: -0.001})
    return sweep


def set_rates(sweep: Path, rates: dict[int, list[float]]) -> None:
    """Give each job's history.csv its per-epoch training cells/s, and metrics.json their mean."""
    for job, values in rates.items():
        path = sweep / str(job) / "history.csv"
        history = pd.read_csv(path)
        history["train_cells_per_s"] = values
        history.to_csv(path, index=False)
        set_metrics(sweep, [job], train_cells_per_s=sum(values) / len(values))


# --- the multirun report's answer --------------------------------------------------------------


def test_a_difference_beyond_the_seed_spread_is_the_answer(tmp_path):
    sweep = healthy(scored_sweep(tmp_path / "s", three_seeds(0.6, 0.7)))
    text = answer(build_report(sweep, tmp_path / "r"))
    assert text.startswith(
        "**Answer:** `model=hidden_512` differed from `czi_128` beyond the seed spread: better on "
        "validation negative ELBO (-10.0, -1.1%; seed sd ±0.00%), bio conservation (+0.100; "
        "seed sd ±0.000) and integration total (+0.060; seed sd ±0.000); within the seed spread "
        "(no difference shown): batch correction."
    )
    assert "All 6 complete jobs finished their KL warm-up and had converged" in text
    assert "synthetic demo data" in text  # the jobs' dataset is `demo`
    assert "\n" not in text  # one paragraph


def test_a_difference_within_the_seed_spread_is_no_difference(tmp_path):
    bio = three_seeds(0.6, 0.6) | {
        ("hidden_512", s): 0.6 + d for s, d in zip("012", (0.03, -0.02, 0.0), strict=True)
    }
    text = answer(build_report(scored_sweep(tmp_path / "s", bio), tmp_path / "r"))
    assert text.startswith(
        "**Answer:** `model=hidden_512` did not differ from `czi_128` beyond the seed spread on "
        "any metric (validation negative ELBO, bio conservation, batch correction and "
        "integration total within it)."
    )
    assert "better" not in text and "worse" not in text
    # no health recorded (a run from before the checks): not called healthy
    assert "6 of 6 jobs recorded no run health" in text


def test_one_seed_gives_single_differences_and_the_seed_command(tmp_path):
    sweep = scored_sweep(tmp_path / "s", {("czi_128", None): 0.6, ("hidden_512", None): 0.7})
    text = answer(build_report(sweep, tmp_path / "r"))
    assert text.startswith("**Answer:** One seed per job: no difference can be told")
    assert "`model=hidden_512` against `czi_128` changed" in text
    assert "bio conservation (+0.100)" in text
    assert "Add seeds with `python train.py -m model=czi_128,hidden_512" in text


def test_verdicts_on_unhealthy_jobs_are_provisional(tmp_path):
    sweep = scored_sweep(tmp_path / "s", three_seeds(0.6, 0.7))
    health = {WARMUP: UNFINISHED, STILL_FALLING: FALLING}
    set_metrics(sweep, range(6), health=health, kl_weight=0.45)
    set_metrics(sweep, [0, 1, 2], **{LOSS_CHANGE: -0.039})
    set_metrics(sweep, [3, 4, 5], **{LOSS_CHANGE: -0.042})
    report = build_report(sweep, tmp_path / "r")
    text = answer(report)
    assert (
        "Run health: 6 of 6 jobs had not finished the KL warm-up (KL weight 0.45 of 1 at the "
        "end) and 6 of 6 jobs had not converged (the validation loss still fell 3.9-4.2% an epoch "
        "at the end); treat these verdicts as provisional and train longer" in text
    )
    rows = verdict_rows(report)
    assert rows["bio conservation"][-1] == "**better**, provisional"
    assert "Provisional: jobs 0, 1, 2, 3, 4, 5 had not finished training" in report.read_text()
    assert "A verdict is *provisional* when a job it rests on" in report.read_text()


def test_a_score_below_the_pca_baseline_is_said_but_makes_no_verdict_provisional(tmp_path):
    sweep = healthy(scored_sweep(tmp_path / "s", three_seeds(0.6, 0.7)))
    set_metrics(sweep, [0], health={"below_baseline": "below PCA on bio"})
    report = build_report(sweep, tmp_path / "r")
    text = answer(report)
    assert "provisional" not in text
    assert "All 6 complete jobs finished their KL warm-up and had converged" in text
    assert "Also, 1 of 6 jobs score below the PCA baseline on an integration score" in text
    assert verdict_rows(report)["bio conservation"][-1] == "**better**"


def test_unsteady_throughput_is_not_compared(sweep_dir, tmp_path):
    # one job's own rate jumped between epochs (the machine's load)
    set_rates(sweep_dir, {0: [1500.0, 1279.0, 19500.0]})
    report = build_report(sweep_dir, tmp_path / "r")
    text = answer(report)
    assert "Speed (training cells/s, training time) is not compared: job 0's own rate varied" in (
        text
    )
    assert "(1,279 to 19,500 cells/s)" in text
    rows = verdict_rows(report)
    assert rows["training cells/s"][-1] == "not compared (speed: see above)"
    assert rows["training time"][-1] == "not compared (speed: see above)"
    assert "+476" not in report.read_text()


def test_seeds_of_one_setting_at_different_rates_are_not_compared(sweep_dir, tmp_path):
    # each job steady, but czi_128 ran at 2,000 cells/s with seed 0 and 19,500 with seed 1
    set_rates(sweep_dir, {1: [19000.0, 19500.0, 19500.0]})
    text = answer(build_report(sweep_dir, tmp_path / "r"))
    assert "jobs of the same settings (only their seeds differ: jobs 0, 1) ran at 2,000 to " in text
    assert "19,333 cells/s: the machine's load, not the settings, moved it." in text


def test_steady_throughput_is_compared(sweep_dir, tmp_path):
    rows = verdict_rows(build_report(sweep_dir, tmp_path / "r"))
    assert rows["training cells/s"][-1] == "**worse**"
    assert "Here they are compared." in (tmp_path / "r" / "report.md").read_text()


def test_losses_on_different_cells_are_said_not_compared(sweep_dir, tmp_path):
    set_metrics(sweep_dir, [0, 1], cells_validation=100)
    set_metrics(sweep_dir, [2, 3], cells_validation=120)
    text = answer(build_report(sweep_dir, tmp_path / "r"))
    assert (
        "validation negative ELBO and validation reconstruction loss are not compared: the "
        "levels measure them on different cells." in text
    )
    assert "better on bio conservation (+0.020; seed sd ±0.000)" in text


def test_failed_and_unfinished_jobs_are_said(sweep_dir, tmp_path):
    text = answer(build_report(sweep_dir, tmp_path / "r"))
    assert "Of the 6 jobs, 1 failed and 1 had not finished: this rests on the 4 complete" in text


def test_a_seed_only_sweep_has_nothing_to_compare_and_says_how_the_loss_settled(tmp_path):
    from test_report import scored_job

    for job, seed in enumerate("012"):
        scored_job(tmp_path / "s", job, [f"seed={seed}"], 0.6, epochs=3)
    set_metrics(tmp_path / "s", range(3), epochs_to_1pct_elbo_validation=3)
    text = answer(build_report(tmp_path / "s", tmp_path / "r"))
    assert text.startswith(
        "**Answer:** Only the seed was swept (3 complete jobs): there is no setting to compare; "
        "the report shows how much the jobs vary and how they converged. The validation negative "
        "ELBO, within 1% of its end value: had not settled by the end (epoch 3) in any of the 3 "
        "jobs."
    )


def test_a_sweep_with_no_finished_job_says_so(tmp_path):
    from test_report import write_job

    write_job(tmp_path / "s", 0, ["model=czi_128"], "")
    text = answer(build_report(tmp_path / "s", tmp_path / "r"))
    assert text.startswith("**Answer:** none yet: no job of 1 has finished.")


# --- convergence --------------------------------------------------------------------------------


def test_a_value_that_settled_only_at_its_last_point_had_not_settled(sweep_dir, tmp_path):
    """``epochs_to_1pct_*`` at the last epoch means "never settled", not "converged at 3"."""
    set_metrics(sweep_dir, [0, 1, 2], epochs_to_1pct_elbo_validation=3)
    set_metrics(sweep_dir, [3], epochs_to_1pct_elbo_validation=2)
    text = build_report(sweep_dir, tmp_path / "r").read_text()
    line = next(x for x in text.splitlines() if x.startswith("- **validation negative ELBO**"))
    assert "settled in 1 of 4 jobs, from epoch 2" in line
    assert "had not settled by the end (epoch 3) in 3 of 4 (jobs 0, 1, 2)" in line
    assert "median 3 (range 3-3" not in text
    set_metrics(sweep_dir, [3], epochs_to_1pct_elbo_validation=3)
    text = build_report(sweep_dir, tmp_path / "again").read_text()
    assert "had not settled by the end (epoch 3) in any of the 4 jobs" in text


def test_the_run_page_says_a_loss_that_never_settled(tmp_path):
    run = run_folder(tmp_path / "run", cells_to_1pct_elbo_validation=3000)
    text = write_run_report(run).read_text()
    assert "had not settled by the end: it was within 1% of its final value only at its last" in (
        text
    )
    run = run_folder(tmp_path / "early", cells_to_1pct_elbo_validation=2000)
    text = write_run_report(run).read_text()
    assert "stayed within 1% of its final value from 2,000 training cells seen" in text


# --- numbers -----------------------------------------------------------------------------------


def test_numbers_have_one_format_per_metric():
    assert (loss(1671.297), score(0.85351), whole(13240.07), whole(2980.3)) == (
        "1,671.3",
        "0.854",
        "13,240",
        "2,980",
    )
    assert [duration(s) for s in (16.53, 150.0, 7300.0)] == ["16.5 s", "2.5 min", "2.0 h"]
    assert (general(13240.07), general(2980.3), general(0.12345)) == ("13,240", "2,980", "0.1235")


def test_a_column_of_times_keeps_one_unit():
    column = durations([92.8, 130.0, 186.0])  # the median, 130 s, is over two minutes
    assert [column(v) for v in (92.8, 186.0)] == ["1.5 min", "3.1 min"]
    assert durations([5.0, 9.0])(9.0) == "9.0 s"


def test_the_jobs_table_mixes_no_exponents_with_plain_numbers(sweep_dir, tmp_path):
    set_rates(sweep_dir, {0: [13240.07, 13240.07, 13240.07], 1: [2980.3, 2980.3, 2980.3]})
    text = build_report(sweep_dir, tmp_path / "r").read_text()
    jobs = text.split("## Jobs")[1].split("##")[0]
    assert "e+" not in jobs
    assert "| 0 | complete | czi_128 | 0 | 1,000.0 | 950.0 | 13,240 |" in jobs
    assert "| 1 | complete | czi_128 | 1 | 1,010.0 | 960.0 | 2,980 |" in jobs
    assert jobs.count(" 10.0 s |") == 2  # training time in s


# --- no machine paths, pictures titled ---------------------------------------------------------


def test_no_report_names_a_machine_path(sweep_dir, tmp_path, monkeypatch):
    text = build_report(sweep_dir, tmp_path / "r").read_text()
    assert str(tmp_path) not in text and "/tmp" not in text
    monkeypatch.chdir(tmp_path)  # inside the working folder: relative to it
    text = build_report(sweep_dir, tmp_path / "again").read_text()
    assert f"Sweep folder: `{sweep_dir.name}`" in text and str(tmp_path) not in text
    run = run_folder(tmp_path / "runs" / "3", cells_to_1pct_elbo_validation=2000)
    page = write_run_report(run).read_text()
    assert "Run folder: `runs/3`" in page and str(tmp_path) not in page
    study = build_study_report("s", make_study(tmp_path / "study", 4), tmp_path / "sr")
    assert str(tmp_path) not in study.read_text()


def test_commands_and_storages_name_no_machine_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = (
        f"python /opt/repo/train.py --config-dir {tmp_path}/conf dataset.path=/data/census/store "
        "'evaluation.epochs=[1, 2]' hydra.mode=RUN"
    )
    assert shown_command(command) == (
        "python …/train.py --config-dir conf dataset.path=…/store 'evaluation.epochs=[1, 2]' "
        "hydra.mode=RUN"
    )
    assert shown_storage(f"sqlite:///{tmp_path}/studies/s.db") == "sqlite:///studies/s.db"
    assert shown_storage("/elsewhere/s.journal") == "…/s.journal"
    assert shown_storage("postgresql://optuna@db/optuna") == "postgresql://optuna@db/optuna"


def test_pictures_are_titled_with_their_job_and_settings(tmp_path):
    run = run_folder(tmp_path / "sweep" / "3", cells_to_1pct_elbo_validation=2000)
    history = pd.read_csv(run / "history.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    title = plot_curves(history, metrics).get_suptitle()
    assert title == "job 3: model=hidden_512 seed=0"
    layout = pd.DataFrame(
        {
            "umap_scvi_1": [0.0, 1.0],
            "umap_scvi_2": [0.0, 1.0],
            "umap_pca_1": [0.0, 1.0],
            "umap_pca_2": [1.0, 0.0],
            "cell_type": ["T", "B"],
            "dataset_id": ["53d208b0-2cfd-4366-9866-c3c6114081bc", "a"],
        }
    )
    fig = plot_embedding(layout, "job 3: model=hidden_512 seed=0")
    assert fig.get_suptitle().startswith("job 3: model=hidden_512 seed=0\n2 evaluation cells")
    legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().texts]
    assert "53d208b0…" in legends  # a CELLxGENE id, shortened: the store keeps no titles
    assert any(ax.get_title().endswith("dataset (id)") for ax in fig.axes)
    sweep = load_sweep(scored_sweep(tmp_path / "architecture", three_seeds(0.6, 0.7)))
    fig = next(p() for n, _, p in planned_figures(sweep) if n == "elbo_validation.png")
    assert fig.get_suptitle().startswith("architecture: ")


# --- the run page and the study report open with their answer ----------------------------------


def run_folder(folder: Path, **extra) -> Path:
    """A finished run folder of job 3 of a sweep: 3 epochs, 1,000 training cells an epoch,
    scored against the PCA baseline, with warnings."""
    folder.mkdir(parents=True)
    metrics = {
        "job_name": "3:model=hidden_512,seed=0",
        "overrides": ["model=hidden_512", "seed=0"],
        "choices": {"dataset": "demo", "model": "hidden_512"},
        "epochs": 3,
        "cells_train": 1000,
        "cells_validation": 100,
        "cells_seen": 3000,
        "train_time_s": 75.0,
        "train_cells_per_s": 40.0,
        "wall_time_s": 130.0,
        "elbo_validation": 1510.25,
        "kl_weight": 0.1,
        LOSS_CHANGE: -0.042,
        "epochs_to_1pct_elbo_validation": extra.get("cells_to_1pct_elbo_validation", 0) / 1000,
        "bio_conservation": 0.897,
        "pca_bio_conservation": 0.81,
        "batch_correction": 0.234,
        "pca_batch_correction": 0.243,
        "evaluation_cells": 1000,
        "health": {WARMUP: UNFINISHED, STILL_FALLING: FALLING},
        **extra,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "cells_seen": [1000, 2000, 3000],
            "elbo_validation": [1700.0, 1577.0, 1510.25],
            "elbo_train": [1750.0, 1600.0, 1520.0],
            "kl_weight": [0.0, 0.05, 0.1],
        }
    ).to_csv(folder / "history.csv", index=False)
    return folder


def test_the_run_page_opens_with_what_was_trained_and_how_it_ended(tmp_path):
    run = run_folder(tmp_path / "3", cells_to_1pct_elbo_validation=3000)
    text = write_run_report(run).read_text()
    opening = text.split("\n\n")[1]
    assert opening.startswith(
        "**In short:** Job 3 (`model=hidden_512 seed=0`) trained scVI for 3 epochs on 1,000 "
        "training cells of the `demo` data (75.0 s of training). Its validation negative ELBO "
        "ended at 1,510.2 and had not settled by the end, still falling 4.2% an epoch"
    )
    assert (
        "Against the PCA baseline, it scores higher on bio conservation (0.897 vs 0.810); "
        "lower on batch correction (0.234 vs 0.243)" in opening
    )
    assert "Health: 2 warnings (the KL warm-up had not finished; the loss had not converged)" in (
        opening
    )
    assert "treat these numbers as provisional" in opening
    assert "| bio conservation | 0.897 | 0.810 | +0.087 |" in text  # 3 decimals


def test_the_study_report_opens_with_the_best_trial_and_how_firm_it_is(tmp_path):
    report = build_study_report("s", make_study(tmp_path, 4), tmp_path / "report")
    text = answer(report)
    assert text.startswith("**Answer:** the best of 3 complete trials (1 pruned) is trial ")
    assert "How firm: the next best, trial" in text and "behind" in text
    assert "Each trial ran one seed" in text
    assert "rest on 3 complete trials (fewer than ~20: indicative only)" in text
    assert "Its run recorded no health checks (made before they existed)." in text
    for folder in (tmp_path / "runs").iterdir():  # a run that recorded its health
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**metrics, "health": {}}))
    again = answer(build_study_report("s", make_study_url(tmp_path), tmp_path / "again"))
    assert again.endswith("Its run's health has no warnings.")


# --- the glossary -------------------------------------------------------------------------------


def test_every_term_links_to_a_heading_of_the_glossary():
    headings = {
        anchor(line.removeprefix("## "))
        for line in (REPO_ROOT / GLOSSARY_PATH).read_text().splitlines()
        if line.startswith("## ")
    }
    assert {anchor(h) for h in TERMS.values()} <= headings
    assert anchor("KL warm-up") == "kl-warm-up" and anchor("Bio conservation") == "bio-conservation"


def test_links_work_from_where_reports_land():
    target = REPO_ROOT / GLOSSARY_PATH
    assert relative_link(REPO_ROOT / "multirun_reports" / "x", target) == "../../docs/glossary.md"
    examples = REPO_ROOT / "multirun_reports" / "examples" / "x"
    assert relative_link(examples, target) == "../../../docs/glossary.md"
    assert relative_link(Path("/elsewhere/report"), target) is None


def test_a_report_links_its_terms_or_names_the_glossary(sweep_dir, tmp_path, monkeypatch):
    text = build_report(sweep_dir, tmp_path / "r").read_text()
    assert "are explained in `docs/glossary.md` of the scvi-sweep repository" in text
    fake = tmp_path / "repo" / "docs" / "glossary.md"  # a checkout around the report folder
    fake.parent.mkdir(parents=True)
    fake.write_text("# Glossary\n")
    monkeypatch.setattr(glossary, "glossary_file", lambda: fake)
    report = build_report(sweep_dir, tmp_path / "repo" / "multirun_reports" / "x")
    text = report.read_text()
    assert "[bio conservation](../../docs/glossary.md#bio-conservation)" in text
    assert "[seed spread](../../docs/glossary.md#seed-spread)" in answer(report)
    links = set(re.findall(r"\]\(\.\./\.\./docs/glossary\.md#([\w-]+)\)", text))
    assert links <= {anchor(h) for h in TERMS.values()}


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    return make_sweep(tmp_path / "2026-01-01_10-00-00", scores=True)
