"""The multirun report: hand-made sweep folders with known numbers, and one real multirun."""

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from sweep.cli.hydra_callbacks import MultirunReport
from sweep.cli.report_command import main
from sweep.metric_names import BASELINE_PREFIX as BASELINE
from sweep.paths import REPO_ROOT
from sweep.report.entry import default_out, write_report
from sweep.report.multirun import build_report
from sweep.report.sweep_folder import exception_line, load_sweep
from sweep.report.verdicts import HEADLINE, change, matched_pairs

#: validation ELBO of the complete jobs, by (model, seed)
ELBO = {
    ("czi_128", "0"): 1000.0,
    ("czi_128", "1"): 1010.0,
    ("hidden_512", "0"): 980.0,
    ("hidden_512", "1"): 995.0,
}
TRAIN_TIME = {"czi_128": 10.0, "hidden_512": 24.0}
CELLS_PER_S = {"czi_128": 2000.0, "hidden_512": 1000.0}
#: integration scores by model (only when a test asks for them)
SCORES = {
    "czi_128": {"bio_conservation": 0.60, "batch_correction": 0.50, "integration_total": 0.56},
    "hidden_512": {"bio_conservation": 0.62, "batch_correction": 0.47, "integration_total": 0.56},
}
BASELINE_SCORES = {"pca_bio_conservation": 0.8, "pca_batch_correction": 0.2}
ERROR = "ValueError: no cells left after the cell filter (data.min_genes=100000)"
FAILED_LOG = f"""[2026-01-01 10:00:00,000][sweep.training.job][INFO] - training
[2026-01-01 10:00:01,000][sweep.cli.hydra_callbacks][ERROR] - job failed (model=czi_128 seed=2)
Traceback (most recent call last):
  File "/work/main/src/sweep/training/job.py", line 80, in fit
    datamodule = StoreDataModule(store, cfg.data, cfg.batch, cfg.loader, seed=cfg.seed)
{ERROR}
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_job(sweep: Path, number: int, overrides: list[str], log_text: str) -> Path:
    """A job folder with .hydra/overrides.yaml and train.log, as Hydra starts every job."""
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "train.log").write_text(log_text)
    return job


def finish_job(job: Path, model: str, seed: str, overrides: list[str], scores: bool) -> None:
    """metrics.json and a 3-epoch history.csv of a complete job, from the tables above."""
    elbo = ELBO[model, seed]
    metrics = {
        "elbo_validation": elbo,
        "reconstruction_loss_validation": elbo - 50,
        "kl_local_validation": 50.0,
        "epochs": 3,
        "train_cells_per_s": CELLS_PER_S[model],
        "train_time_s": TRAIN_TIME[model],
        "n_cats_per_cov": [],
        "store": "/tmp/store",
        "job_name": " ".join(overrides),
        "overrides": overrides,
        "choices": {"data": "min_genes_300", "batch": "czi_concat", "model": model},
        **({**SCORES[model], **BASELINE_SCORES} if scores else {}),
    }
    (job / "metrics.json").write_text(json.dumps(metrics))
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "elbo_validation": [elbo + 200, elbo + 50, elbo],
            "reconstruction_loss_validation": [elbo + 150, elbo, elbo - 50],
            "kl_local_validation": [50.0, 50.0, 50.0],
            "elbo_train": [elbo + 250, elbo + 60, elbo + 5],
            "kl_weight": [0.0, 0.05, 0.1],
            # a steady rate (within 1% between epochs): speed is compared
            "train_cells_per_s": [CELLS_PER_S[model] * f for f in (0.8, 1.0, 1.01)],
        }
    )
    if scores:  # scored at some epochs only, as sweep.training.scoring does
        for name, final in SCORES[model].items():
            history[name] = [None, final - 0.1, final]
    history.to_csv(job / "history.csv", index=False)


def make_sweep(folder: Path, scores: bool = False) -> Path:
    """Jobs 0-3: model x seed, complete; job 4 failed; job 5 still running."""
    number = 0
    for model in ("czi_128", "hidden_512"):
        for seed in ("0", "1"):
            overrides = [f"model={model}", f"seed={seed}", "trainer.max_epochs=3"]
            job = write_job(folder, number, overrides, "training\n")
            finish_job(job, model, seed, overrides, scores)
            number += 1
    failed = write_job(folder, 4, ["model=czi_128", "seed=2", "trainer.max_epochs=3"], FAILED_LOG)
    hydra = {"hydra": {"runtime": {"choices": {"batch": "czi_concat", "hydra/launcher": "basic"}}}}
    (failed / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    write_job(folder, 5, ["model=hidden_512", "seed=2", "trainer.max_epochs=3"], "training\n")
    (folder / "multirun.yaml").write_text("hydra: {}\n")
    return folder


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    return make_sweep(tmp_path / "2026-01-01_10-00-00")


@pytest.fixture
def report(sweep_dir, tmp_path) -> Path:
    return build_report(sweep_dir, tmp_path / "report")


def test_results_csv_has_one_row_per_job_with_status_choices_and_metrics(report):
    results = pd.read_csv(report.parent / "results.csv", dtype={"seed": str})
    assert list(results["job"]) == [0, 1, 2, 3, 4, 5]
    assert list(results["status"]) == ["complete"] * 4 + ["failed", "running"]
    assert results["error"].fillna("").tolist() == ["", "", "", "", ERROR, ""]
    assert results["overrides"][2] == "model=hidden_512 seed=0 trainer.max_epochs=3"
    assert list(results["model"]) == ["czi_128", "czi_128", "hidden_512", "hidden_512"] + [
        "czi_128",
        "hidden_512",
    ]
    assert list(results["seed"]) == ["0", "1", "0", "1", "2", "2"]
    # the failed job's choices come from .hydra/hydra.yaml, without Hydra's own groups
    assert results["batch"].tolist()[:5] == ["czi_concat"] * 5
    assert "hydra/launcher" not in results
    assert results["elbo_validation"].tolist()[:4] == list(ELBO.values())
    assert results["elbo_validation"][4:].isna().all()
    assert results["train_time_s"][2] == 24.0
    # numeric metrics only
    assert not {"store", "job_name", "n_cats_per_cov", "choices"} & set(results)


def test_swept_factors_are_the_override_keys_that_differ(sweep_dir):
    assert load_sweep(sweep_dir).factors == ["model", "seed"]


def test_a_key_only_some_jobs_override_is_a_factor(tmp_path):
    write_job(tmp_path, 0, ["model=czi_128"], "")
    write_job(tmp_path, 1, ["model=czi_128", "data.min_genes=100"], "")
    sweep = load_sweep(tmp_path)
    assert sweep.factors == ["data.min_genes"]
    assert sweep.results["data.min_genes"].tolist() == ["(default)", "100"]


def test_exception_line_is_the_last_tracebacks_exception():
    chained = (
        "Traceback (most recent call last):\n  File 'a.py'\nKeyError: 'x'\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n  File 'b.py', line 3\n    raise\n"
        "RuntimeError: no store\nsecond line of the message\n"
    )
    assert exception_line(chained) == "RuntimeError: no store"
    assert exception_line("[INFO] - training\n[INFO] - epoch 2\n") is None


def test_verdict_numbers_match_the_known_metrics(sweep_dir):
    sweep = load_sweep(sweep_dir)
    pairs = matched_pairs(sweep, "model", "czi_128", "hidden_512", ["elbo_validation"])
    assert len(pairs) == 2
    elbo = change(pairs, HEADLINE[0], seeded=True)
    assert elbo.difference == pytest.approx(-17.5)  # (-20 - 15) / 2
    assert elbo.relative == pytest.approx(-17.5 / 1005)
    per_seed = [-20 / 1000 * 100, -15 / 1010 * 100]
    assert elbo.spread == pytest.approx(abs(per_seed[0] - per_seed[1]) / math.sqrt(2))
    # |mean| 1.74% > 2 standard errors (2 x 0.36% / sqrt(2) = 0.52%)
    assert elbo.seeds == 2 and elbo.beyond_spread


def test_report_states_verdicts_in_words(report):
    text = report.read_text()
    section = text.split("### `model`: `hidden_512` vs `czi_128`\n\n")[1]
    assert section.startswith("2 job pairs (the same seed and other settings), 2 seeds")
    for row in (  # a row per metric: the two means, the change, the seed sd and the verdict
        "| validation negative ELBO (lower is better) | 1,005.0 | 987.5 | -17.5 (-1.7%) | ±0.36% "
        "| **better** |",
        "| validation reconstruction loss (lower is better) | 955.0 | 937.5 | -17.5 (-1.8%) "
        "| ±0.38% | **better** |",
        "| training cells/s (higher is better) | 2,000 | 1,000 | -1,000 (-50.0%) | ±0.00% "
        "| **worse** |",
        "| training time (lower is better) | 10.0 s | 24.0 s | +14.0 s (+140.0%) | ±0.00% "
        "| **worse** |",
    ):
        assert row in section
    assert "exceeds 2 standard errors of that mean" in text  # the rule, stated
    assert "No job has integration scores with a PCA baseline" in text
    assert "One seed per job" not in text
    assert "**seed**" not in text and "### `seed`" not in text  # seeds are replicates


def test_integration_scores_are_judged_higher_is_better(tmp_path):
    report = build_report(make_sweep(tmp_path / "sweep", scores=True), tmp_path / "report")
    text = report.read_text()
    rows = verdict_rows(report)
    assert rows["bio conservation"][2:] == ["+0.020", "±0.000", "**better**"]
    assert rows["batch correction"][2:] == ["-0.030", "±0.000", "**worse**"]
    assert rows["integration total"][2:] == ["+0.000", "±0.000", "within seed spread"]
    for line in (
        "- **bio conservation**: all 4 jobs score 0.600-0.620, below the PCA baseline's 0.800",
        "- **batch correction**: all 4 jobs score 0.470-0.500, above the PCA baseline's 0.200",
    ):
        assert line in text
    for name in ("bio_vs_batch", "convergence"):
        assert (report.parent / f"{name}.png").read_bytes().startswith(PNG_MAGIC)


def scored_job(sweep: Path, number: int, overrides: list[str], bio: float, epochs: int = 1):
    """A complete demo-data job of ``epochs`` epochs scoring ``bio`` in bio conservation (0.5 in
    batch correction) against a PCA baseline of 0.8 and 0.2."""
    job = write_job(sweep, number, overrides, "")
    scores = {
        "bio_conservation": bio,
        "batch_correction": 0.5,
        "integration_total": 0.6 * bio + 0.2,
    }
    metrics = {
        "elbo_validation": 1000.0 - 100 * bio,
        "epochs": epochs,
        "overrides": overrides,
        "choices": {"dataset": "demo"},
        **scores,
        **BASELINE_SCORES,
        "pca_integration_total": 0.56,
    }
    (job / "metrics.json").write_text(json.dumps(metrics))
    epoch = list(range(1, epochs + 1))
    history = {"epoch": epoch, "elbo_validation": [1000.0] * epochs, "kl_weight": [0.5] * epochs}
    pd.DataFrame({**history, **{k: [v] * epochs for k, v in scores.items()}}).to_csv(
        job / "history.csv", index=False
    )


def scored_sweep(folder: Path, bio: dict[tuple[str, str | None], float], epochs: int = 1) -> Path:
    """A sweep of ``scored_job`` jobs, one per (model, seed) of ``bio`` (no seed override for
    None), in that order."""
    for number, ((model, seed), score) in enumerate(bio.items()):
        overrides = [f"model={model}", *([f"seed={seed}"] if seed else []), "trainer.max_epochs=1"]
        scored_job(folder, number, overrides, score, epochs)
    return folder


def verdict_rows(report: Path, level: str = "hidden_512") -> dict[str, list[str]]:
    """The rows of a report's verdict table of ``model`` at ``level``: metric (without its
    direction) -> the reference's and the level's means, change, seed sd and verdict."""
    text = report.read_text().split(f"### `model`: `{level}` vs ")[1].split("\n\n")[2]
    rows = {}
    for line in text.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].split(" (")[0]] = cells[1:]
    return rows


def test_a_one_seed_sweep_calls_no_level_better_or_worse_and_gives_the_seed_command(tmp_path):
    sweep = scored_sweep(tmp_path / "sweep", {("czi_128", None): 0.6, ("hidden_512", None): 0.7})
    report = build_report(sweep, tmp_path / "report")
    rows = verdict_rows(report)
    assert rows["bio conservation"][2:] == ["+0.100", "", "no verdict: one seed"]
    assert not any("better" in row[-1] or "worse" in row[-1] for row in rows.values())
    text = report.read_text()
    assert "**One seed per job**: there is no spread across seeds yet" in text
    command = "python train.py -m model=czi_128,hidden_512 trainer.max_epochs=1 seed=0,1,2"
    assert f"Add seeds with `{command}`." in text
    assert "**Demo data**" in text


def test_the_seed_command_keeps_an_override_with_a_space_whole(tmp_path):
    """An override whose value holds a space (a list) is one argument of the seed command (the
    command was cut at the space when it was read back from results.csv's joined column)."""
    for number, model in enumerate(("czi_128", "hidden_512")):
        overrides = [f"model={model}", "evaluation.epochs=[1, 2]"]
        scored_job(tmp_path / "sweep", number, overrides, 0.6, 1)
    text = build_report(tmp_path / "sweep", tmp_path / "report").read_text()
    command = "python train.py -m model=czi_128,hidden_512 'evaluation.epochs=[1, 2]' seed=0,1,2"
    assert f"Add seeds with `{command}`." in text


def test_three_seeds_call_a_difference_beyond_their_spread_better(tmp_path):
    bio = {("czi_128", s): 0.6 + d for s, d in zip("012", (0, 0.01, -0.01), strict=True)}
    bio |= {("hidden_512", s): 0.7 + d for s, d in zip("012", (0, 0.01, -0.01), strict=True)}
    rows = verdict_rows(build_report(scored_sweep(tmp_path / "s", bio), tmp_path / "r"))
    assert rows["bio conservation"] == ["0.600", "0.700", "+0.100", "±0.000", "**better**"]


def test_three_seeds_give_no_verdict_on_a_difference_within_their_spread(tmp_path):
    bio = {("czi_128", s): 0.6 for s in "012"}
    bio |= {("hidden_512", s): 0.6 + d for s, d in zip("012", (0.03, -0.02, 0.0), strict=True)}
    rows = verdict_rows(build_report(scored_sweep(tmp_path / "s", bio), tmp_path / "r"))
    assert rows["bio conservation"][2:] == ["+0.003", "±0.025", "within seed spread"]


def test_the_report_states_each_aggregate_against_the_pca_baseline(tmp_path):
    bio = {("czi_128", None): 0.55, ("hidden_512", None): 0.65, ("czi_256", None): 0.9}
    text = build_report(scored_sweep(tmp_path / "s", bio), tmp_path / "r").read_text()
    assert "## Against the PCA baseline" in text
    assert (
        "- **bio conservation**: of 3 jobs, 1 job above (0.900: model=czi_256), "
        "2 jobs below (0.550-0.650: model=czi_128, model=hidden_512); "
        "the PCA baseline's 0.800"
    ) in text
    assert "- **batch correction**: all 3 jobs score 0.500, above the PCA baseline's 0.200" in text
    assert "- **integration total**: of 3 jobs, 2 jobs above (0.590-0.740: model=hidden_512" in text


def test_a_report_never_overwrites_another_sweeps_report(tmp_path):
    first = scored_sweep(tmp_path / "a" / "10-00-00", {("czi_128", None): 0.6})
    second = scored_sweep(tmp_path / "b" / "10-00-00", {("czi_128", None): 0.7})
    root = tmp_path / "reports"
    one = write_report(first, out_root=root)
    two = write_report(second, out_root=root)
    assert one == root / "10-00-00" / "report.md" and two == root / "10-00-00-2" / "report.md"
    # source.txt records whose report it is; report.md names no machine path
    assert (one.parent / "source.txt").read_text() == f"sweep folder {first.resolve()}\n"
    assert (two.parent / "source.txt").read_text() == f"sweep folder {second.resolve()}\n"
    assert str(tmp_path) not in one.read_text() + two.read_text()
    assert write_report(second, out_root=root) == two  # a rebuild finds its own folder
    assert write_report(first, out_root=root) == one
    (root / "legacy").mkdir()
    (root / "legacy" / "report.md").write_text("a report from before source.txt")
    legacy = scored_sweep(tmp_path / "c" / "legacy", {("czi_128", None): 0.6})
    assert write_report(legacy, out_root=root) == root / "legacy-2" / "report.md"
    assert (root / "legacy" / "report.md").read_text() == "a report from before source.txt"


def test_headline_scores_are_the_ones_evaluate_writes():
    from sweep.evaluation.scib import AGGREGATES
    from sweep.metric_names import BASELINE_PREFIX

    assert set(AGGREGATES.values()) <= {m.key for m in HEADLINE}
    assert BASELINE_PREFIX == BASELINE


def test_figures_are_png_files(report):
    for name in ["elbo_validation", "kl_weight", "by_model", "by_seed"]:
        data = (report.parent / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    for name in ["bio_vs_batch", "convergence"]:  # no integration scores in this sweep
        assert not (report.parent / f"{name}.png").exists()


def test_report_lists_every_job_and_embeds_the_figures(report, sweep_dir):
    text = report.read_text()
    assert text.startswith(f"# Multirun report: {sweep_dir.name}\n\n**Answer:** ")
    assert f"Sweep folder: `{sweep_dir.name}`" in text  # outside the working folder: its name
    assert "Jobs: 4 complete, 1 failed, 1 running / unfinished." in text
    for number, status in enumerate(["complete"] * 4 + ["failed", "running"]):
        assert f"| {number} | {status} |" in text
    assert (
        "![validation negative ELBO (the loss) per epoch, lower is better](elbo_validation.png)"
    ) in text
    assert "](by_model.png)" in text
    assert f"- job 4 (`model=czi_128 seed=2 trainer.max_epochs=3`): {ERROR}" in text
    assert "## Running / unfinished jobs\n\n- job 5 (`model=hidden_512" in text


def test_losses_on_different_validation_cells_are_not_compared(sweep_dir, tmp_path):
    """A level that validates on other cells (a cell filter, as `data=none`) gets no verdict on
    its validation losses: the demo's `none` looked 9% "better" on its tiny extra cells."""
    for job, cells in ((0, 100), (1, 100), (2, 120), (3, 120)):
        metrics = json.loads((sweep_dir / str(job) / "metrics.json").read_text())
        (sweep_dir / str(job) / "metrics.json").write_text(
            json.dumps({**metrics, "cells_validation": cells})
        )
    rows = verdict_rows(build_report(sweep_dir, tmp_path / "report"))
    different = "not compared: measured on different cells (100 vs 120)"
    assert rows["validation negative ELBO"][-1] == different
    assert rows["validation reconstruction loss"][-1] == different
    assert rows["training cells/s"][-1] == "**worse**"  # on the training cells: judged as before
    # the same cells: judged as before
    for job in (2, 3):
        metrics = json.loads((sweep_dir / str(job) / "metrics.json").read_text())
        (sweep_dir / str(job) / "metrics.json").write_text(
            json.dumps({**metrics, "cells_validation": 100})
        )
    rows = verdict_rows(build_report(sweep_dir, tmp_path / "again"))
    assert rows["validation negative ELBO"][2:] == ["-17.5 (-1.7%)", "±0.36%", "**better**"]


def test_the_report_counts_the_jobs_that_failed_each_health_check(sweep_dir, tmp_path):
    assert (
        "## Run health\n\nThe checks of each job's `report.md` (its Health section), over "
        "complete jobs:\n\n- no job has a warning\n"
        in build_report(sweep_dir, tmp_path / "quiet").read_text()
    )
    unfinished = "the KL warm-up had not finished: the last epoch trained at KL weight 0.15 of 1"
    for job, findings in (
        (1, {"kl_warmup_unfinished": unfinished}),
        (3, {"kl_warmup_unfinished": unfinished, "below_baseline": "below PCA on bio"}),
    ):
        metrics = json.loads((sweep_dir / str(job) / "metrics.json").read_text())
        (sweep_dir / str(job) / "metrics.json").write_text(
            json.dumps({**metrics, "health": findings})
        )
    text = build_report(sweep_dir, tmp_path / "report").read_text()
    assert (
        "- **KL warm-up unfinished (`kl_warmup_unfinished`; makes a verdict provisional)**: 2 of "
        f"4 complete jobs (1, 3); job 1: {unfinished}\n" in text
    )
    assert (
        "- **below the PCA baseline (`below_baseline`; a result)**: 1 of 4 complete jobs (3); "
        "job 3: below PCA on bio\n" in text
    )
    assert "no job has a warning" not in text


def test_levels_without_a_matching_job_are_named(tmp_path):
    for number, (model, batch) in enumerate([("czi_128", "a"), ("hidden_512", "b")]):
        overrides = [f"model={model}", f"batch={batch}"]
        job = write_job(tmp_path / "sweep", number, overrides, "")
        finish_job(job, model, "0", overrides, scores=False)
    text = build_report(tmp_path / "sweep", tmp_path / "report").read_text()
    assert "- **model**: no complete job at `hidden_512` matches a `czi_128` job" in text


def test_a_sweep_that_just_started_still_gets_a_report(tmp_path):
    write_job(tmp_path / "sweep", 0, ["model=czi_128"], "")
    write_job(tmp_path / "sweep", 1, ["model=hidden_512"], "")
    report = build_report(tmp_path / "sweep", tmp_path / "report")
    text = report.read_text()
    assert "Jobs: 0 complete, 0 failed, 2 running / unfinished." in text
    assert "- **model**: fewer than two of its levels have complete jobs" in text
    assert not list(report.parent.glob("*.png"))


def test_command_line_and_default_folder(sweep_dir, tmp_path):
    main([str(sweep_dir), "--out", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "report.md").is_file()
    assert default_out(sweep_dir) == REPO_ROOT / "multirun_reports" / sweep_dir.name


def test_an_experiments_report_is_named_after_the_experiment(tmp_path):
    """``experiment=architecture`` sweeps into outputs/train/experiments/architecture/<time>:
    its report goes to multirun_reports/architecture/ (then architecture-2/ for the next)."""
    first = tmp_path / "outputs/train/experiments/architecture/2026-12-07_10-00-00"
    second = first.with_name("2026-12-07_11-00-00")
    plain = tmp_path / "outputs/train/multiruns/2026-12-07_12-00-00"
    for sweep in (first, second, plain):
        write_job(sweep, 0, ["model=czi_128"], "")
    root = tmp_path / "reports"
    assert write_report(first, out_root=root) == root / "architecture" / "report.md"
    assert write_report(second, out_root=root) == root / "architecture-2" / "report.md"
    assert write_report(plain, out_root=root) == root / "2026-12-07_12-00-00" / "report.md"


def test_the_command_line_asks_for_a_sweep_folder_or_a_study_with_its_storage(capsys):
    for argv, message in (
        ([], "give a sweep folder, or --study NAME --storage STORAGE"),
        (["--study", "s"], "--study needs --storage"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err


def test_one_entry_point_reports_a_sweep_folder_for_the_callback_and_the_command(
    sweep_dir, tmp_path
):
    report = write_report(sweep_dir, out_root=tmp_path / "root")
    assert report == tmp_path / "root" / sweep_dir.name / "report.md"
    assert write_report(sweep_dir, out_dir=tmp_path / "here") == tmp_path / "here" / "report.md"


def test_callback_writes_the_report_under_out_root(sweep_dir, tmp_path):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
    MultirunReport(out_root=str(tmp_path / "reports")).on_multirun_end(config)
    assert (tmp_path / "reports" / sweep_dir.name / "report.md").is_file()


def test_callback_logs_instead_of_raising(tmp_path, caplog):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "not-a-folder").write_text("")  # the report cannot be written under a file
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    MultirunReport(out_root=str(tmp_path / "not-a-folder")).on_multirun_end(config)
    assert "the multirun report failed" in caplog.text
    assert "NotADirectoryError" in caplog.text or "FileExistsError" in caplog.text


def test_callback_writes_no_report_for_a_sweep_that_never_started(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "missing")}}})
    MultirunReport(out_root=str(tmp_path / "reports")).on_multirun_end(config)
    assert "no multirun report: the sweep stopped before its first job" in caplog.text
    assert "failed" not in caplog.text and not (tmp_path / "reports").exists()


def test_callback_logs_a_failed_jobs_traceback(caplog):
    try:
        raise ValueError("no cells left")
    except ValueError as error:
        failure = error
    job_return = JobReturn(overrides=["data.min_genes=100000"], status=JobStatus.FAILED)
    job_return.return_value = failure
    with caplog.at_level(logging.ERROR):
        MultirunReport().on_job_end(OmegaConf.create(), job_return)
    assert exception_line(caplog.text) == "ValueError: no cells left"
    assert "data.min_genes=100000" in caplog.text


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """A data cache shared by this session's end-to-end tests (the demo store is built once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
def test_a_real_multirun_writes_its_report_and_the_command_rebuilds_it(demo_cache, tmp_path):
    sweep_dir, reports = tmp_path / "sweep", tmp_path / "reports"
    env = {**os.environ, "SCVI_SWEEP_CACHE": str(demo_cache), "WANDB_SILENT": "true"}
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        "-m",
        "model=czi_128,hidden_512",
        "trainer.max_epochs=2",
        "logger=none",
        "evaluation=none",  # integration scoring is slow on CPU; unit tests cover the scores
        "loader.num_workers=0",
        "trainer.enable_progress_bar=false",
        "save_model=false",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.callbacks.report.out_root={reports}",
    ]
    subprocess.run(command, cwd=tmp_path, env=env, check=True, timeout=600)

    report = reports / "sweep" / "report.md"
    assert "Jobs: 2 complete, 0 failed, 0 running / unfinished." in report.read_text()
    results = pd.read_csv(reports / "sweep" / "results.csv")
    assert list(results["status"]) == ["complete", "complete"]
    assert list(results["model"]) == ["czi_128", "hidden_512"]
    text = report.read_text()
    assert "### `model`: `hidden_512` vs `czi_128`\n\n1 job pair (the same other settings)" in text
    assert "| validation negative ELBO (lower is better) |" in text

    rebuild = [
        sys.executable,
        "-m",
        "sweep.cli.report_command",
        str(sweep_dir),
        "--out",
        str(tmp_path / "re"),
    ]
    subprocess.run(rebuild, cwd=tmp_path, env=env, check=True, timeout=120)
    assert (tmp_path / "re" / "results.csv").read_text() == (
        reports / "sweep" / "results.csv"
    ).read_text()
