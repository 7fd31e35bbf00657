"""Known-harmless messages of the libraries a job uses, silenced so the ones that matter show.

Each filter names one message and why it says nothing about the user's data or run. Everything
else (scvi-tools' warnings about the data, Lightning's about the run) still shows.
"""

from __future__ import annotations

import logging
import re
import warnings

#: (message start, category, why it is harmless here)
HARMLESS_WARNINGS = (
    (
        "The `srun` command is available",
        Warning,
        "Lightning's hint on a machine with SLURM installed: our SLURM launchers start jobs "
        "through srun themselves, and a job started outside them is meant to run as it is",
    ),
    (
        "os.fork() was called",
        RuntimeWarning,
        "JAX (scib-metrics) warns when the DataLoader forks workers after scoring started JAX; "
        "the workers never call JAX, so its threads cannot deadlock them",
    ),
    (
        "`isinstance(treespec, LeafSpec)` is deprecated",
        Warning,
        "Lightning's own use of a torch API that torch 2.13 deprecates",
    ),
)

#: (logger name, message start): INFO records that advertise or report an absent accelerator
HARMLESS_RECORDS = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip"),  # an advertisement for litlogger
    ("jax._src.xla_bridge", "Unable to initialize backend"),  # JAX looking for a TPU
    # scib-metrics (on the root logger) at each scoring: a fixed setting of its isolated-labels
    # metric, not a fact about the data
    ("root", "isolated labels: no more than"),
)


class _DropStartingWith(logging.Filter):
    """Drops the records of one logger whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_known_harmless() -> None:
    """Install the filters above; calling it again adds nothing."""
    for message, category, _why in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    for name, prefix in HARMLESS_RECORDS:
        logger = logging.getLogger(name)
        if not any(getattr(f, "prefix", None) == prefix for f in logger.filters):
            logger.addFilter(_DropStartingWith(prefix))
