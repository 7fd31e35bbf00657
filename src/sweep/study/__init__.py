"""Optuna studies for train.py: the ``hydra/sweeper=optuna`` plugin's logic and the trial-side
pruning callback (the study report is sweep.report.study_report).

- ``config``: the sweeper's config schema (hydra-optuna-sweeper's keys, plus pruner, heartbeat)
- ``search_space``: ``hydra.sweeper.params`` syntax -> Optuna distributions and job overrides
- ``storage``: where a study lives (a stable default file) and what the sweep folder records of it
- ``liveness``: heartbeats of running trials; trials of dead processes marked failed and retried
- ``sweeper``: the ask -> launch -> tell loop shared by any number of processes
- ``pruning``: the Lightning callback a trial reports its validation ELBO through
- ``attrs``: the names of the attrs the sweep stores on trials and studies
"""
