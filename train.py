"""Train scVI on a prepared store: `python train.py [group=option ...]`, `-m` for a multirun.

The groups (conf/): dataset, data, batch, model, plan, loader, trainer, logger, experiment.
Returns the job's `optimized_metric` so sweepers can optimise it.
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweep.config import register_schema
from sweep.paths import CONF_DIR

register_schema()


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from sweep.train import run  # heavy imports after Hydra has parsed the command line

    logging.getLogger("lightning").handlers.clear()  # it propagates to Hydra's handlers too
    return run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
