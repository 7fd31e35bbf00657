"""The names of what the sweep stores on Optuna trials and studies (their user and system attrs).

Written by the sweep loop (``sweeper``), the trial liveness (``liveness``) and the trial-side
pruning callback (``pruning``); read by them and by the study report (sweep.report.study_report).
"""

from sweep.metric_names import (
    CELLS_SEEN,
    EPOCH,
    PRUNED_AT_CELLS_SEEN,
    PRUNED_AT_FRACTIONAL_EPOCH,
)

#: prefix of the system attrs the sweep itself sets on a trial (a retry copies none of them)
SYSTEM_PREFIX = "sweep:"
#: trial system attrs: the sweep process running the trial and its last sign of life (time.time())
HOST, PID, HEARTBEAT = f"{SYSTEM_PREFIX}host", f"{SYSTEM_PREFIX}pid", f"{SYSTEM_PREFIX}heartbeat"
#: trial system attr of a trial that does not count toward n_trials: why (stale, surplus)
VOID = f"{SYSTEM_PREFIX}void"
#: trial user attr of a queued retry: the number of the stale trial it repeats
RETRY_OF = "retry_of"
#: trial user attr (and metrics.json key): the epoch (counted from 1) after which it was pruned,
#: or in which, when it was pruned between epoch ends (history.csv's last row, a partial epoch)
PRUNED_AT = "pruned_at_epoch"
#: trial user attrs (and metrics.json keys): training cells seen and epochs trained (fractional)
#: when it was pruned; every pruned trial has them, whatever its steps are
PRUNED_AT_CELLS, PRUNED_AT_FRACTION = PRUNED_AT_CELLS_SEEN, PRUNED_AT_FRACTIONAL_EPOCH
#: trial user attrs: its job overrides, the command that re-runs it, its run folder, its failure
OVERRIDES, COMMAND, RUN_DIR, ERROR = "overrides", "command", "run_dir", "error"
#: study user attr: the pruner config (``_target_`` + arguments) the trials build
PRUNER = "pruner"
#: study user attr: what the steps of its intermediate values are, STEPS_EPOCHS (the N-th finished
#: epoch) or STEPS_CELLS (training cells seen); set by its first trial, absent: epochs
STEPS = "intermediate_steps"
STEPS_EPOCHS, STEPS_CELLS = EPOCH, CELLS_SEEN
