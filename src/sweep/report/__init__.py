"""Reports of sweeps: a Hydra multirun's folder or an Optuna study -> ``multirun_reports/<name>/``,
and a run's own page. Each report opens with its answer in words.

- ``numbers``: numbers as people read them, one format per kind of metric
- ``render``: what the reports render alike (markdown tables, the data-set note, paths without the
  machine's folders, figure style and legends, writing figures)
- ``glossary``: links from the reports' words to ``docs/glossary.md``
- ``headline``: the headline metrics' names in words (``validation negative ELBO``), units and
  directions
- ``sweep_folder``: a sweep folder's job folders read into a results table (sweep.run_folder)
- ``trust``: which jobs make a verdict provisional (their health), and whether speed was steady
  enough to compare
- ``verdicts``: each swept level against the reference level, judged against the spread across
  seeds; ``verdict_tables``: them as a table per level, a row per metric
- ``settling``: when a value settled, telling "had not settled by the end" from "settled"
- ``answer``: the multirun report's opening paragraph
- ``baseline``: where each job or trial stands against the PCA baseline, in words
- ``embedding``: a run's UMAP picture (embedding.png, from the layout of
  sweep.evaluation.embedding) and the multirun report's gallery of them
- ``run_answer``, ``run_report``: a run's own page (report.md, curves.png) and its opening, with its
  health (judged by sweep.evaluation.health)
- ``multirun_figures``, ``multirun``: the multirun report (results.csv, figures, health,
  embeddings, report.md)
- ``study_trials``, ``study_figures``, ``study_report``: the study report (trials.csv, figures,
  report.md), read from the study's storage
- ``entry``: ``write_report``, the one entry point of the command line (sweep.cli.report_command)
  and of the end-of-sweep callback (sweep.cli.hydra_callbacks); it tells a sweep folder from a study
  and picks a report folder that holds no other sweep's report

Imports go one way: entry -> multirun, study_report -> their figures, answer, verdict_tables ->
verdicts, trust, settling, baseline -> render, numbers, glossary (and sweep_folder, headline).
"""
