"""scvi-sweep's ``hydra/launcher=slurm_gpu`` and ``slurm_ddp`` (conf/hydra/launcher/):
hydra-submitit-launcher's submitit_slurm, whose sweep also ends when a job ends without a result.
Hydra loads launchers only from ``hydra_plugins``."""
