"""Train scVI on a prepared store: `python train.py [group=option ...]`, `-m` for a multirun.

The groups (conf/): dataset, data, batch, model, plan, loader, trainer, logger, experiment.
Returns the job's `optimized_metric` so sweepers can optimise it.
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweep.config import ConfigError, check_command_line, register_schema, validate
from sweep.paths import CONF_DIR
from sweep.quiet import quiet_known_harmless
from sweep.secret_overrides import SecretInOverride

register_schema()


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # Each job's one check (sweep.train trusts it), before the heavy imports. A single run's
    # config was checked already by RefuseBadConfig, before Hydra wrote its folder; the second
    # check stays because in a multirun that callback sees only the base config, not each job's
    # values (sweeps, an Optuna trial's parameters).
    validate(cfg)
    quiet_known_harmless()
    from sweep.train import run

    logging.getLogger("lightning").handlers.clear()  # it propagates to Hydra's handlers too
    return run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    try:
        check_command_line(sys.argv[1:], CONF_DIR)  # unknown keys, values out of range: at once
    except (ConfigError, SecretInOverride) as error:
        sys.exit(f"Error: {error}")
    main()
