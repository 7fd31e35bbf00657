"""The multirun report's figures read at a glance with 1 job or 20: nothing cut off at the saved
image's edges, legends included; bars from zero; units on the axes; a one-epoch run visible."""

from pathlib import Path

import matplotlib.image
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from sweep.report.multirun import planned_figures
from sweep.report.sweep_folder import load_sweep
from test_report import scored_sweep

#: a long swept value, as a label of 20 jobs would have
LONG = "hidden_512_layers_2_dropout_0.1"


def assert_readable(fig: Figure, path: Path) -> None:
    """Save ``fig`` to ``path``; assert that every panel with its tick labels, axis labels and
    title, every figure legend and the title lie inside the saved image."""
    fig.savefig(path)
    height, width = matplotlib.image.imread(path).shape[:2]
    assert abs(width - fig.bbox.width) <= 1 and abs(height - fig.bbox.height) <= 1
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_visible()]
    boxes += [legend.get_window_extent(renderer) for legend in fig.legends]
    if fig._suptitle is not None:
        boxes.append(fig._suptitle.get_window_extent(renderer))
    for box in boxes:
        assert box.x0 >= -1 and box.y0 >= -1, (path.name, box)
        assert box.x1 <= width + 1 and box.y1 <= height + 1, (path.name, box)


def sweep_of(folder: Path, n_jobs: int, epochs: int):
    """A scored sweep of ``n_jobs`` jobs (``n_jobs`` / 2 models x 2 seeds, or one job)."""
    if n_jobs == 1:
        return load_sweep(scored_sweep(folder, {("czi_128", None): 0.6}, epochs))
    bio = {(f"{LONG}_{i // 2}", str(i % 2)): 0.5 + i / 100 for i in range(n_jobs)}
    return load_sweep(scored_sweep(folder, bio, epochs))


@pytest.mark.parametrize("n_jobs", [1, 20])
def test_every_figure_lies_inside_its_saved_image_with_1_or_20_jobs(tmp_path, n_jobs):
    sweep = sweep_of(tmp_path / "sweep", n_jobs, epochs=3)
    written = []
    for name, _, plot in planned_figures(sweep):
        fig = plot()
        if fig is not None:
            assert_readable(fig, tmp_path / name)
            written.append(name)
    expected = {"elbo_validation.png", "kl_weight.png", "convergence.png", "bio_vs_batch.png"}
    assert expected <= set(written)
    if n_jobs == 20:
        assert {"by_model.png", "by_seed.png"} <= set(written)
        legend = next(p() for n, _, p in planned_figures(sweep) if n == "elbo_validation.png")
        assert len(legend.legends[0].get_texts()) == 20


def test_bars_start_at_zero_with_seed_error_bars_and_every_axis_has_its_unit(tmp_path):
    sweep = sweep_of(tmp_path / "sweep", 4, epochs=3)
    figures = {name: plot() for name, _, plot in planned_figures(sweep)}
    by_model = figures["by_model.png"]
    panels = [ax for ax in by_model.axes if ax.get_visible()]
    assert all(ax.get_ylim()[0] <= 0 for ax in panels)
    assert all(  # error bars: the sd across seeds
        any(isinstance(c, ErrorbarContainer) for c in ax.containers) for ax in panels
    )
    units = {ax.get_title(): ax.get_ylabel() for ax in panels}
    assert units["validation negative ELBO"] == "validation negative ELBO (per cell)"
    assert units["bio conservation"] == "bio conservation (score 0-1)"
    (elbo,) = figures["elbo_validation.png"].axes
    assert (elbo.get_xlabel(), elbo.get_ylabel()) == (
        "epoch",
        "validation negative ELBO (per cell)",
    )
    (kl,) = figures["kl_weight.png"].axes
    assert kl.get_ylabel() == "KL weight (0-1)"


def test_a_one_epoch_run_shows_as_markers_on_a_sensible_axis(tmp_path):
    sweep = sweep_of(tmp_path / "sweep", 1, epochs=1)
    fig = next(plot() for name, _, plot in planned_figures(sweep) if name == "elbo_validation.png")
    (ax,) = fig.axes
    assert ax.get_xlim() == (0.5, 1.5)
    assert [tick for tick in ax.get_xticks() if 0.5 <= tick <= 1.5] == [1]
    (line,) = ax.get_lines()
    assert line.get_marker() == "o" and list(line.get_xdata()) == [1]
