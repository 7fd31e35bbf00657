"""A run whose KL warm-up outlasts its epochs says so in the log (before and after training), in
metrics.json and in its report's health (issue 10, defect 9: the demo's 10 epochs stop at KL
weight 0.45 of 1; issue 13)."""

import json
import logging

import pytest

from sweep.report.run_report import write_run_report
from sweep.training.job import fit
from test_train import compose_train

QUICK = ["logger=none", "loader.num_workers=0", "save_model=false", "trainer.max_epochs=2"]
#: training steps of the 2 epochs of QUICK on the `store` fixture (2,177 cells: 3 batches an epoch)
STEPS = 6


@pytest.mark.slow
@pytest.mark.parametrize(
    ("plan", "complete", "last_weight", "end_weight"),
    [
        # CZI's 20-epoch warm-up over 2 epochs: the last epoch trains at 1/20
        (["plan=czi"], False, 0.05, 0.05),
        # a 1-epoch warm-up: the second epoch trains at the full weight
        (["plan=czi", "plan.n_epochs_kl_warmup=1"], True, 1.0, 1.0),
        # a step warm-up twice the 2 epochs' STEPS: the last epoch starts at 3/12 and the
        # weight ends at 6/12 (Lightning cannot count the steps of an iterable loader: the
        # first warning said "end at -0.00" before the datamodule counted them)
        (["plan=czi_kl_steps", f"plan.n_steps_kl_warmup={2 * STEPS}"], False, 0.25, 0.5),
    ],
)
def test_an_unfinished_kl_warmup_is_said_in_the_log_and_metrics(
    store, tmp_path, caplog, plan, complete, last_weight, end_weight
):
    caplog.set_level(logging.WARNING, logger="sweep.training.kl_warmup")
    fit(compose_train(store, *QUICK, *plan), tmp_path / "run", write_page=write_run_report)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["kl_warmup_complete"] is complete
    assert metrics["kl_weight"] == pytest.approx(last_weight)
    warnings = [r.getMessage() for r in caplog.records if r.name == "sweep.training.kl_warmup"]
    if complete:
        assert warnings == []
        assert "kl_warmup_unfinished" not in metrics["health"]
    else:  # one warning as training starts, one as it ends: the run's health says the latter
        assert len(warnings) == 2
        warmup = plan[-1].split("=")[0] if len(plan) > 1 else "plan.n_epochs_kl_warmup=20"
        assert warmup in warnings[0] and f"end at {end_weight:.2f} of 1" in warnings[0]
        assert "had not finished" in warnings[1] and f"{end_weight:.2f} of 1" in warnings[1]
        assert metrics["health"]["kl_warmup_unfinished"] == warnings[1]
        report = (tmp_path / "run" / "report.md").read_text()
        assert f"- **WARNING**: {warnings[1]}" in report
