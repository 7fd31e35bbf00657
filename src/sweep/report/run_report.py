"""One run's page: ``report.md`` in its run folder, with the run's curves (``curves.png``) and its
embedding picture (sweep.report.embedding), built from the run folder alone, so that
``python -m sweep.report.run_report RUN_DIR`` rebuilds it; and the run's health (:func:`health`),
judged as training ends, kept in metrics.json and said in the log and the page.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sweep import run_folder
from sweep.report.embedding import EMBEDDING_FIGURE, draw_embedding
from sweep.report.render import (
    DPI,
    REPORT_FILE,
    cells_seen_axis,
    figure_lines,
    markdown_table,
    write_figures,
)
from sweep.run_folder import (
    BASELINE_PREFIX,
    BATCH,
    BIO,
    CELLS_CONVERGENCE_PREFIX,
    CELLS_SEEN,
    CONVERGENCE_PREFIX,
    ELBO_VALIDATION,
    EPOCH,
    KL_WEIGHT,
    STEP_VALIDATION_CELLS,
    TOTAL,
)

CURVES_FIGURE = "curves.png"
#: the aggregate integration scores -> their words
AGGREGATE_WORDS = {BIO: "bio conservation", BATCH: "batch correction", TOTAL: "total"}
#: the validation loss still falls by more than this fraction an epoch at the end: not converged
FALLING_PER_EPOCH = 0.01
#: a batch category with fewer training cells than this is too small to learn its batch effect
#: from: scVI learns each category's decoder weights from that category's cells only. A rule of
#: thumb (a tenth of a 1,024-cell minibatch), named so that the report can say it
SMALL_BATCH_CELLS = 100

# metrics.json keys
HEALTH = "health"  # check -> message, for each check the run failed
LOSS_CHANGE = "elbo_validation_change_last_epoch"  # (last - previous) / |previous|; < 0: falling
MIN_BATCH_CELLS = "batch_category_min_cells"
SMALL_BATCHES = "small_batch_categories"  # how many have < SMALL_BATCH_CELLS training cells
SMALLEST_BATCHES = "smallest_batch_categories"  # the three smallest of them: name -> cells
#: the health checks (keys of metrics.json's HEALTH)
WARMUP, STILL_FALLING, BELOW_BASELINE = "kl_warmup_unfinished", "still_falling", "below_baseline"
#: model sizes as built (metrics.json key -> words)
MODEL_SIZES = {
    "model_genes": "genes",
    "model_hidden": "hidden units",
    "model_layers": "layers",
    "model_latent": "latent dimensions",
    "n_batch": "batch categories",
    "model_parameters": "trainable parameters",
}


# --- health ------------------------------------------------------------------------------------


def last_epoch_change(values: pd.Series) -> float | None:
    """The relative change of ``values`` (one per epoch) in the last epoch,
    (last - previous) / |previous| (negative: falling); None with fewer than two epochs."""
    if len(values) < 2:
        return None
    previous, last = float(values.iloc[-2]), float(values.iloc[-1])
    return (last - previous) / max(abs(previous), 1e-12)


def batch_category_sizes(cells: np.ndarray, names: list[str]) -> dict:
    """metrics.json's batch category sizes from ``cells`` (n_batch,), the training cells of each
    category named in ``names``: the smallest count, how many are below SMALL_BATCH_CELLS, and
    the three smallest of those (name -> cells)."""
    small = [i for i in np.argsort(cells, kind="stable") if cells[i] < SMALL_BATCH_CELLS]
    return {
        MIN_BATCH_CELLS: int(cells.min()),
        SMALL_BATCHES: len(small),
        SMALLEST_BATCHES: {names[i]: int(cells[i]) for i in small[:3]},
    }


def health(metrics: dict, warmup_unfinished: str | None) -> dict[str, str]:
    """The checks a finished run fails -> what to tell its reader: an unfinished KL warm-up
    (``warmup_unfinished``, sweep.callbacks.KlWarmupWatch's warning), a validation loss still
    falling by more than FALLING_PER_EPOCH, scVI below the PCA baseline on an aggregate score,
    batch categories below SMALL_BATCH_CELLS training cells. ``metrics``: metrics.json's."""
    findings = {WARMUP: warmup_unfinished} if warmup_unfinished else {}
    change = metrics.get(LOSS_CHANGE)
    if change is not None and -change > FALLING_PER_EPOCH:
        findings[STILL_FALLING] = (
            f"the validation loss (negative ELBO) was still falling by {-change:.1%} an epoch at "
            f"the end (more than {FALLING_PER_EPOCH:.0%}): the model has not converged, train "
            "longer (trainer.max_epochs)"
        )
    below = [
        f"{words} ({metrics[key]:.3f} vs {metrics[BASELINE_PREFIX + key]:.3f})"
        for key, words in AGGREGATE_WORDS.items()
        if metrics.get(key, np.inf) < metrics.get(BASELINE_PREFIX + key, -np.inf)
    ]
    if below:
        findings[BELOW_BASELINE] = (
            f"scVI scored below the unintegrated PCA baseline on {', '.join(below)}"
        )
    if metrics.get(SMALL_BATCHES):
        smallest = "; ".join(f"{k}: {v} cells" for k, v in metrics[SMALLEST_BATCHES].items())
        findings[SMALL_BATCHES] = (
            f"{metrics[SMALL_BATCHES]} of {metrics['n_batch']} batch categories have fewer than "
            f"{SMALL_BATCH_CELLS} training cells, too few to learn their batch effect from "
            f"(smallest: {smallest}); choose a coarser batch group"
        )
    return findings


# --- the page ----------------------------------------------------------------------------------


def plot_curves(
    history: pd.DataFrame,
    metrics: dict,
    steps: pd.DataFrame | None = None,
    integration: pd.DataFrame | None = None,
) -> Figure:
    """The run's curves, a panel each: its loss (negative ELBO, validation and training), KL
    weight and, where scored, integration scores on a 0-1 axis with the PCA baseline's
    (``metrics``: metrics.json's) as dashed lines.

    Per epoch (whole-epoch ticks, one epoch as dots), or, when the run measured between epoch
    ends (``steps``: steps.csv), against training cells seen: the step-level validation loss
    and KL weight as lines, the epoch ends' values as dots, the scores from ``integration``
    (integration.csv, step-level rows included)."""
    by_cells = steps is not None and len(steps) > 0 and CELLS_SEEN in history
    x = CELLS_SEEN if by_cells else EPOCH
    scored = integration if by_cells and integration is not None else history
    cells = metrics.get(STEP_VALIDATION_CELLS)
    loss = [
        (history, ELBO_VALIDATION, "validation", "o-"),
        (history, "elbo_train", "training", "o-"),
    ]
    if by_cells:  # the step-level validation loss, the epoch ends' values as dots
        loss = [
            (
                steps,
                ELBO_VALIDATION,
                f"validation, {cells:,} cells" if cells else "validation",
                "-",
            ),
            (history, ELBO_VALIDATION, "validation, epoch end", "o"),
            (history, "elbo_train", "training, epoch mean", "o"),
        ]
    panels = [  # (title, y-axis unit, [(table, column, legend, line style)])
        ("loss = negative ELBO", "nats per cell (lower is better)", loss),
        (
            "KL weight of the loss's KL term",
            "weight (0-1)",
            [(steps if by_cells else history, KL_WEIGHT, "KL weight", "o-")],
        ),
        (
            "integration score",
            "score (0-1, higher is better)",
            [(scored, column, name, "o-") for column, name in AGGREGATE_WORDS.items()],
        ),
    ]
    panels = [
        (title, unit, [line for line in lines if line[0] is not None and line[1] in line[0]])
        for title, unit, lines in panels
    ]
    panels = [panel for panel in panels if panel[2]]
    fig = Figure(figsize=(4 * len(panels), 3.6), dpi=DPI, layout="constrained")
    for ax, (title, unit, lines) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        for table, column, name, style in lines:
            points = table[[x, column]].dropna()  # scores exist at scored points only
            line = ax.plot(points[x], points[column], style, markersize=3, label=name)
            if BASELINE_PREFIX + column in metrics:
                ax.axhline(
                    metrics[BASELINE_PREFIX + column],
                    color=line[0].get_color(),
                    linestyle="--",
                    label=f"PCA baseline: {name}",
                )
        if lines[0][1] in AGGREGATE_WORDS:
            ax.set_ylim(0, 1)
        if by_cells:
            cells_seen_axis(ax, history[CELLS_SEEN].max())
        else:
            ax.set_xlim(0.5, history[EPOCH].max() + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.set_xlabel("epoch")
        ax.set_ylabel(unit, fontsize="small")
        ax.set_title(title, fontsize="small")
        ax.legend(fontsize="x-small")
    return fig


def trained_lines(metrics: dict) -> list[str]:
    """The section of what was trained: group choices, overrides, the built model's sizes, the
    cells, time and final loss."""
    choices = pd.DataFrame(list(metrics[run_folder.CHOICES].items()), columns=["group", "option"])
    overrides = " ".join(f"`{o}`" for o in metrics[run_folder.OVERRIDES]) or "none"
    sizes = ", ".join(f"{metrics[k]:,} {w}" for k, w in MODEL_SIZES.items() if k in metrics)
    covariates = ", ".join(map(str, metrics.get("n_cats_per_cov") or []))
    if covariates:
        sizes += f"; categorical covariates of {covariates} categories"
    return [
        "## What was trained",
        "",
        markdown_table(choices),
        "",
        f"Overrides: {overrides}.",
        "",
        f"Model as built: {sizes}"
        + (
            f"; categorical covariates of {', '.join(map(str, covariates))} categories"
            if covariates
            else ""
        )
        + ".",
        "",
        f"{metrics[run_folder.EPOCHS]} epochs on {metrics['cells_train']:,} training cells "
        f"({metrics[run_folder.CELLS_VALIDATION]:,} validation), "
        f"{metrics[run_folder.TRAIN_TIME]:.0f} s of "
        f"training ({metrics[run_folder.TRAIN_CELLS_PER_S]:,.0f} cells/s), "
        f"{metrics['wall_time_s']:.0f} s wall. Final validation loss (negative ELBO, lower is "
        f"better): {metrics[ELBO_VALIDATION]:.6g} at KL weight {metrics[KL_WEIGHT]:.2f}.",
        "",
        *settled_lines(metrics),
    ]


def settled_lines(metrics: dict) -> list[str]:
    """When the validation loss settled, in training cells seen and epochs (the
    ``cells_to_*``/``epochs_to_*`` metrics of the validation loss), and where it was measured."""
    suffix = f"_{ELBO_VALIDATION}"
    cells = next(
        (k for k in metrics if k.startswith(CELLS_CONVERGENCE_PREFIX) and k.endswith(suffix)),
        None,
    )
    if cells is None or metrics[cells] is None:
        return []
    tolerance = cells.removeprefix(CELLS_CONVERGENCE_PREFIX).removesuffix(suffix)
    epochs = metrics[CONVERGENCE_PREFIX + cells.removeprefix(CELLS_CONVERGENCE_PREFIX)]
    where = (
        f"measured between epoch ends on {metrics[STEP_VALIDATION_CELLS]:,} validation cells "
        "(steps.csv)"
        if STEP_VALIDATION_CELLS in metrics
        else "measured at epoch ends"
    )
    return [
        f"The validation loss, {where}, stayed within {tolerance.replace('pct', '%')} of its "
        f"final value from {metrics[cells]:,} training cells seen (epoch {epochs:.3g}) on.",
        "",
    ]


def health_lines(metrics: dict) -> list[str]:
    """The health section: what was checked, each failed check as a warning, or none."""
    findings = metrics.get(HEALTH, {})
    checked = (
        "whether the KL warm-up had finished by the last epoch, whether the validation loss was "
        f"still falling by more than {FALLING_PER_EPOCH:.0%} an epoch at the end, whether scVI "
        "scored below the PCA baseline on an aggregate score, and whether a batch category has "
        f"fewer than {SMALL_BATCH_CELLS} training cells"
    )
    lines = [f"- **WARNING**: {message}" for message in findings.values()]
    if metrics.get(LOSS_CHANGE) is None:
        lines.append("- one epoch: whether the validation loss was still falling is not known")
    return ["## Health", "", f"Checked {checked}.", "", *(lines or ["- no warnings"]), ""]


def scores_lines(metrics: dict) -> list[str]:
    """The section of scores against the PCA baseline: a table and a sentence (or "Not
    scored")."""
    keys = [k for k in AGGREGATE_WORDS if k in metrics and BASELINE_PREFIX + k in metrics]
    if not keys:
        return ["## Scores", "", "Not scored (evaluation=none).", ""]
    differences = {k: metrics[k] - metrics[BASELINE_PREFIX + k] for k in keys}
    table = pd.DataFrame(
        {
            "score (0-1, higher is better)": [AGGREGATE_WORDS[k] for k in keys],
            "scVI": [metrics[k] for k in keys],
            "PCA baseline": [metrics[BASELINE_PREFIX + k] for k in keys],
            "scVI - PCA": list(differences.values()),
        }
    )
    words = [
        f"{'above' if d >= 0 else 'below'} it on {AGGREGATE_WORDS[k]} ({d:+.3f})"
        for k, d in differences.items()
    ]
    return [
        "## Scores against the PCA baseline",
        "",
        f"scib-metrics on {metrics['evaluation_cells']} validation cells at the last epoch, "
        "beside the unintegrated PCA baseline of the same cells: scVI is "
        f"{', '.join(words)}. One run of one seed: the spread across seeds is not known, so "
        "a small difference may be noise.",
        "",
        markdown_table(table),
        "",
    ]


def report_text(run_dir: Path, metrics: dict, figures: list[tuple[str, str]]) -> str:
    """The text of a run's report.md."""
    return (
        "\n".join(
            [
                f"# Run report: {metrics['job_name']}",
                "",
                f"Run folder: `{Path(run_dir).resolve()}`",
                "",
                *trained_lines(metrics),
                *health_lines(metrics),
                *scores_lines(metrics),
                "## Figures",
                "",
                *figure_lines(figures),
            ]
        ).rstrip()
        + "\n"
    )


def write_run_report(run_dir: str | Path) -> Path:
    """Draw the run's curves and embedding picture and write its report.md, from the run folder
    alone (metrics.json, history.csv, steps.csv, integration.csv, embedding.csv); return
    report.md's path."""
    run_dir = Path(run_dir)
    metrics = run_folder.read_metrics(run_dir)
    if metrics is None:
        raise FileNotFoundError(f"{run_dir} has no {run_folder.METRICS_FILE}: not a finished run")
    history = run_folder.read_table(run_dir, run_folder.HISTORY_FILE)
    steps = run_folder.read_table(run_dir, run_folder.STEPS_FILE)
    integration = run_folder.read_table(run_dir, run_folder.INTEGRATION_FILE)
    what = "the run per epoch" if steps is None else "the run against training cells seen"
    figures = write_figures(
        [(CURVES_FIGURE, what, lambda: plot_curves(history, metrics, steps, integration))],
        run_dir,
    )
    if draw_embedding(run_dir) is not None:
        figures.append(
            (
                EMBEDDING_FIGURE,
                "evaluation cells in 2-D (UMAP): scVI's latent space beside the PCA baseline",
            )
        )
    report = run_dir / REPORT_FILE
    report.write_text(report_text(run_dir, metrics, figures))
    return report


def main(argv: list[str] | None = None) -> None:
    """``python -m sweep.report.run_report RUN_DIR``: rebuild a finished run's report.md."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("run_dir", type=Path)
    print(write_run_report(parser.parse_args(argv).run_dir))


if __name__ == "__main__":
    main()
