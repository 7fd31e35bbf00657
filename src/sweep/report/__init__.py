"""Reports of sweeps: a Hydra multirun's folder or an Optuna study -> ``multirun_reports/<name>/``.

- ``render``: what both reports render alike (markdown tables, the data-set note, figure style
  and legends, writing figures)
- ``headline``: the headline metrics' names in words (``validation negative ELBO``), units and
  directions
- ``sweep_folder``: a sweep folder's job folders read into a results table (sweep.run_folder)
- ``verdicts``: each swept level against the reference level, in words, judged against the spread
  across seeds
- ``baseline``: where each job or trial stands against the PCA baseline, in words
- ``embedding``: a run's UMAP picture (embedding.png, from the layout of
  sweep.evaluation.embedding) and the multirun report's gallery of them
- ``run_report``: a run's own page (report.md, curves.png), with its health (judged by
  sweep.evaluation.health)
- ``multirun``: the multirun report (results.csv, figures, health, embeddings, report.md)
- ``study_report``: the study report (trials.csv, figures, report.md), read from the study's storage
- ``entry``: ``write_report``, the one entry point of the command line (sweep.cli.report_command)
  and of the end-of-sweep callback (sweep.cli.hydra_callbacks); it tells a sweep folder from a study
  and picks a report folder that holds no other sweep's report

Imports go one way: entry -> multirun, study_report -> render, baseline, verdicts (and sweep_folder,
headline).
"""
