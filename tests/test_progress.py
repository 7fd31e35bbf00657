"""Progress inside an epoch (issue 21): a bar over the epoch's steps on a terminal, log lines with
cells/s, the loss and the time left elsewhere (a SLURM log file), nothing with the switch off."""

import logging
import re

import pytest

from sweep.config.schema import ConfigError, validate
from sweep.training.job import fit
from sweep.training.progress import duration
from test_train import compose_train

#: 1 epoch of 14 batches of 32 cells on the tiny store, no W&B
QUICK = [
    "logger=none",
    "save_model=false",
    "trainer.max_epochs=2",
    "loader.batch_size=32",
    "loader.num_workers=0",
    "trainer.enable_progress_bar=true",
]
LINE = re.compile(
    r"epoch (\d)/2: step (\d+)/(\d+), [\d,]+ cells/s, loss [\d,.]+, ([\w ?]+) left in the epoch, "
    r"([\w ?]+) in the run"
)


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(0.4, "0 s"), (45, "45 s"), (725, "12 min 5 s"), (12_000, "3 h 20 min"), (float("nan"), "?")],
)
def test_durations_read_as_people_say_them(seconds, words):
    assert duration(seconds) == words


def test_a_negative_log_interval_is_refused_naming_the_key(tiny_store):
    with pytest.raises(ConfigError, match=r"trainer[.]progress_log_every_s=-1"):
        validate(compose_train(tiny_store, "trainer.progress_log_every_s=-1"))


@pytest.mark.slow
def test_a_log_file_gets_a_line_per_interval_and_one_per_epoch(tiny_store, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sweep.training.progress")
    overrides = [*QUICK, "trainer.progress_log_every_s=1e-9"]  # a line every step
    metrics = fit(compose_train(tiny_store, *overrides), tmp_path / "run")[1]
    messages = [r.getMessage() for r in caplog.records if r.name == "sweep.training.progress"]
    steps = [LINE.match(m) for m in messages if "/2: step" in m]
    assert all(steps) and len(steps) == 2 * 14
    assert [(int(m[1]), int(m[2]), int(m[3])) for m in steps] == [
        (epoch, step, 14) for epoch in (1, 2) for step in range(1, 15)
    ]
    assert steps[-1][4] == "0 s" and steps[-1][5] == "0 s"  # the run's last step
    ends = [m for m in messages if " trained: " in m]
    cells = f"{metrics['cells_train']:,} cells in"
    assert len(ends) == 2 and all(cells in m for m in ends)
    assert ends[-1].endswith("0 s of training left")


@pytest.mark.slow
def test_a_terminal_gets_a_bar_and_the_switch_turns_it_all_off(
    tiny_store, tmp_path, caplog, capsys, monkeypatch
):
    caplog.set_level(logging.INFO, logger="sweep.training.progress")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    fit(compose_train(tiny_store, *QUICK), tmp_path / "bar")
    bar = capsys.readouterr().err
    assert "epoch 1/2" in bar and "epoch 2/2" in bar and "14/14" in bar
    assert not [r for r in caplog.records if r.name == "sweep.training.progress"]

    quiet = [*QUICK, "trainer.enable_progress_bar=false", "trainer.progress_log_every_s=1e-9"]
    fit(compose_train(tiny_store, *quiet), tmp_path / "quiet")
    assert "epoch 1/2" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.name == "sweep.training.progress"]
