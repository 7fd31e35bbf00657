"""Reports of sweeps: a Hydra multirun's folder or an Optuna study -> ``multirun_reports/<name>/``.

- ``render``: what both reports render alike (markdown tables, figure style, writing figures)
- ``sweep_folder``: a sweep folder's job folders read into a results table (sweep.run_folder)
- ``verdicts``: each swept level against the reference level, in words
- ``multirun``: the multirun report (results.csv, figures, report.md)
- ``study``: the study report (trials.csv, figures, report.md), read from the study's storage
- ``entry``: ``write_report``, the one entry point of the command line (``__main__``) and of the
  end-of-sweep callback (sweep.hydra_callbacks); it tells a sweep folder from a study

Imports go one way: entry -> multirun, study -> render (and sweep_folder, verdicts).
"""

from sweep.report.entry import default_out, main, write_report
from sweep.report.multirun import build_report
from sweep.report.study import build_study_report

__all__ = [
    "build_report",
    "build_study_report",
    "default_out",
    "main",
    "write_report",
]
