"""A plan before launch (``dry_run=true``): the jobs a command line would start, their cells and
epochs, and what they would cost, with nothing started.

- ``job_list``: the command line expanded into jobs as Hydra would launch them (a single run, a
  grid of the basic sweeper, or an Optuna search's trials), each composed and validated;
- ``calibration``: training and validation throughput, measured on the store and this machine's
  device by a short run of the real model on the real loader (cached), or given;
- ``cost``: cells per epoch from the store's metadata (the split, no loader or model), cells
  seen, validation and scoring counts and the estimated wall time per job and in all;
- ``printout``: the plan in words and a table, the text the training command prints.
"""
