"""Train scVI on a prepared store: ``python train.py [group=option ...]``, ``-m`` for a multirun.

The command lives in :mod:`sweep.cli.train_command` (installed as ``scvi-sweep-train``); groups
in conf/, listed with their options by ``python train.py --help``.
"""

from sweep.cli.train_command import main

if __name__ == "__main__":
    main()
