"""Who runs each trial, and what happens to the trials of a sweep process that died.

A sweep process stamps each trial it asks for with its host and pid and refreshes the trial's
heartbeat every ``heartbeat_interval`` seconds while the trial runs. Before asking for trials, a
RUNNING trial is *stale* when its process is gone (same host, pid not alive) or, on another host,
its heartbeat is older than ``STALE_AFTER`` intervals. A stale trial is marked FAIL and *void*
(it does not count toward ``n_trials``) and its parameters are queued again, so a killed sweep
loses no grid point and a rerun finishes the study with exactly ``n_trials`` counted trials.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.study.attrs import HEARTBEAT, HOST, PID, RETRY_OF, SYSTEM_PREFIX, VOID

log = logging.getLogger(__name__)

STALE_AFTER = 3  # heartbeat intervals


def claim(storage, trial_id: int) -> None:
    """Stamp a trial with a first heartbeat and this process (pid, host).

    The attrs are written one at a time and another sweep process may read the trial between two
    writes; ``HOST`` goes last, so a trial that has it has the others too (``is_stale``).
    """
    storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
    storage.set_trial_system_attr(trial_id, PID, os.getpid())
    storage.set_trial_system_attr(trial_id, HOST, socket.gethostname())


class Heartbeat:
    """A thread refreshing the heartbeat of this process's running trials (a context manager)."""

    def __init__(self, storage, interval: float):
        self.storage = storage
        self.interval = interval
        self.trial_ids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in list(self.trial_ids):
                try:
                    self.storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
                except optuna.exceptions.UpdateFinishedTrialError:
                    self.trial_ids.discard(trial_id)


def process_alive(host: str, pid: int) -> bool | None:
    """Whether the process ``pid`` on ``host`` lives; None when ``host`` is another machine."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: FrozenTrial, interval: float) -> bool:
    """A running trial whose sweep process is gone."""
    attrs = trial.system_attrs
    if HOST not in attrs:
        return False  # not (yet fully) claimed by this sweeper: leave it alone
    alive = process_alive(attrs[HOST], attrs[PID])
    if alive is not None:
        return not alive
    return time.time() - attrs[HEARTBEAT] > STALE_AFTER * interval


def void(storage, trial_id: int, reason: str) -> bool:
    """Mark a trial FAIL and void; False when another process finished it first."""
    try:
        storage.set_trial_system_attr(trial_id, VOID, reason)
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def fail_stale(study: optuna.Study, storage, interval: float) -> list[int]:
    """Void the stale running trials of ``study`` and queue their parameters again; numbers."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, interval):
            continue
        owner = f"pid {trial.system_attrs[PID]} on {trial.system_attrs[HOST]}"
        if not void(storage, trial._trial_id, f"stale: {owner} stopped"):
            continue
        failed.append(trial.number)
        if trial.params:
            retry(study, trial)
        log.warning(
            "trial %d was left running by %s: marked failed, queued again", trial.number, owner
        )
    return failed


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a trial's parameters again, with the sampler's own attrs (the grid point)."""
    system_attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith(SYSTEM_PREFIX)}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={RETRY_OF: trial.number},
            system_attrs=system_attrs,
        )
    )


def counts_toward_total(trial: FrozenTrial) -> bool:
    """Whether a trial uses up one of the study's ``n_trials`` (queued and void ones do not)."""
    return trial.state != TrialState.WAITING and VOID not in trial.system_attrs
