"""Reports of sweeps: a Hydra multirun's folder or an Optuna study -> ``multirun_reports/<name>/``.

- ``render``: what both reports render alike (markdown tables, the data-set note, figure style
  and legends, writing figures)
- ``headline``: the headline metrics' names in words (``validation negative ELBO``), units and
  directions
- ``sweep_folder``: a sweep folder's job folders read into a results table (sweep.run_folder)
- ``verdicts``: each swept level against the reference level, in words, judged against the spread
  across seeds
- ``baseline``: where each job or trial stands against the PCA baseline, in words
- ``embedding``: a run's UMAP picture (embedding.png) and the multirun report's gallery of them
- ``run_report``: a run's own page (report.md, curves.png) and its health checks
- ``multirun``: the multirun report (results.csv, figures, health, embeddings, report.md)
- ``study``: the study report (trials.csv, figures, report.md), read from the study's storage
- ``entry``: ``write_report``, the one entry point of the command line (``__main__``) and of the
  end-of-sweep callback (sweep.hydra_callbacks); it tells a sweep folder from a study and picks a
  report folder that holds no other sweep's report

Imports go one way: entry -> multirun, study -> render, baseline, verdicts (and sweep_folder,
headline).
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
