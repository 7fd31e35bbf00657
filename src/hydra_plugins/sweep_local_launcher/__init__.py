"""scvi-sweep's ``hydra/launcher=local`` (conf/hydra/launcher/local.yaml): hydra-submitit-launcher's
submitit_local with ``max_parallel``. Hydra loads launchers only from ``hydra_plugins``."""
