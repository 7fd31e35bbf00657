"""CLI: many source h5ad files -> one prepared store folder (logic in :mod:`sweep.data.prepare`).

``scvi-sweep-prepare source='/data/*.h5ad' output=/ssd/store genes=/data/genes.tsv``
(keys and defaults: ``conf/prepare.yaml``, schema :class:`sweep.config.schema.PrepareConfig`).
"""

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from sweep.config.schema import PrepareConfig
from sweep.data.prepare import prepare_store
from sweep.paths import CONF_DIR

# the schema heads prepare.yaml's defaults list: ill-typed or unknown keys fail at compose time
ConfigStore.instance().store(name="prepare_schema", node=PrepareConfig)


@hydra.main(config_path=str(CONF_DIR), config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    prepare_store(cfg)


if __name__ == "__main__":
    main()
