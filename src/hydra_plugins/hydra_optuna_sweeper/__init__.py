"""scvi-sweep's Optuna sweeper for Hydra (``hydra/sweeper=optuna``; the logic is sweep.study).

It takes hydra-optuna-sweeper's place, at its import path, so configs written for that plugin,
including those that name its ``_target_``, run unchanged on Optuna >= 4. Do not install both.
"""
