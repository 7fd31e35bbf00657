"""The console scripts: argument parsing and the user's mistakes, then one call into the library.

- ``train_command``: ``python train.py`` / ``scvi-sweep-train`` (Hydra; groups in ``conf/``)
- ``prepare_command``: ``scvi-sweep-prepare`` (Hydra; ``conf/prepare.yaml``)
- ``report_command``: ``scvi-sweep-report`` (a sweep folder, a study, or a run folder)
- ``inspect_command``: ``scvi-sweep-inspect-model`` (a saved model's architecture)
- ``hydra_callbacks``: the train command's Hydra hooks (bad config refused before a run folder
  exists; the multirun report when a sweep ends)
"""
