"""The console scripts: argument parsing and the user's mistakes, then one call into the library.

- ``train_command``: ``python train.py`` / ``scvi-sweep-train`` (Hydra; groups in ``conf/``), with
  ``train_checks`` (group options, the composed config and each job's store, before Hydra starts)
- ``prepare_command``: ``scvi-sweep-prepare`` (Hydra; ``conf/prepare.yaml``)
- ``report_command``: ``scvi-sweep-report`` (a sweep folder, a study, or a run folder)
- ``inspect_command``: ``scvi-sweep-inspect-model`` (a saved model's architecture)
- ``audit_command``: ``scvi-sweep-audit`` (a store's metadata)
- ``hydra_callbacks``: the train command's Hydra hooks (bad config refused before a run folder
  exists; the multirun report when a sweep ends)
- ``errors``: the one way a command refuses a user's mistake (one line, exit status 1)
- ``help_text``: ``--help`` of the two Hydra commands, read from ``conf/`` and the schema

Every command checks its arguments before it imports torch or makes a folder.
"""
