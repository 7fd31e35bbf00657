"""The ``dataset`` group: find the prepared store a job trains on, making a synthetic one if needed.

A data set of ``kind: demo`` (the options ``dataset=demo`` and ``dataset=census_shape``) generates
census-like sources with :mod:`sweep.data.synthetic` from its ``synthetic`` keys and prepares them
with its ``prepare`` keys once into ``<cache>/demo-<fingerprint>/store``; every later job (and every
job of a multirun) reuses it. A file lock keeps parallel jobs from building it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from sweep.data.store import FORMAT_VERSION, MANIFEST_NAME
from sweep.paths import cache_dir

log = logging.getLogger(__name__)


def demo_folder(dataset_cfg) -> Path:
    """``<cache>/demo-<hash of the generator and prepare parameters>``: of those that make the
    store what it is (not where the sources go, nor how prepare runs)."""
    from sweep.data.prepare.config import RUN_ONLY_KEYS

    synthetic = OmegaConf.to_container(dataset_cfg.synthetic, resolve=True)
    prepare = OmegaConf.to_container(dataset_cfg.prepare, resolve=True)
    params = {
        "synthetic": {k: v for k, v in synthetic.items() if k != "output"},
        "prepare": {k: v for k, v in prepare.items() if k not in RUN_ONLY_KEYS},
        "store_format": FORMAT_VERSION,
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"demo-{digest}"


def build_demo_store(folder: Path, dataset_cfg) -> Path:
    """Generate the synthetic sources and prepare them into ``folder/store`` (skipped if
    complete)."""
    from sweep.config.schema import SyntheticConfig
    from sweep.data.prepare import prepare_store
    from sweep.data.synthetic import generate

    store = folder / "store"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel job waits here until the store is built
        if (store / MANIFEST_NAME).is_file():
            return store
        name = "Census-shaped" if dataset_cfg.synthetic.shape == "census" else "demo"
        log.info("building the %s data set in %s (once; later runs reuse it)", name, folder)
        parameters = OmegaConf.to_container(dataset_cfg.synthetic, resolve=True)
        synthetic = SyntheticConfig(**{**parameters, "output": str(folder / "sources")})
        generate(synthetic)
        prepare_store(
            {
                **OmegaConf.to_container(dataset_cfg.prepare, resolve=True),
                "source": str(folder / "sources" / "*.h5ad"),
                "output": str(store),
            }
        )
    return store


def resolve_store(dataset_cfg) -> Path:
    """The store folder a job trains on; a synthetic (``kind: demo``) store is built on first
    use."""
    if dataset_cfg.kind == "demo":
        if dataset_cfg.path:
            raise ValueError(
                "a synthetic data set (dataset=demo, census_shape) makes its own store: "
                "leave dataset.path unset, or use "
                "dataset=prepared dataset.path=/your/store"
            )
        return build_demo_store(demo_folder(dataset_cfg), dataset_cfg)
    if not dataset_cfg.path:
        raise ValueError(
            "dataset=prepared needs dataset.path=/path/to/store "
            "(made by `scvi-sweep-prepare source=... output=...`)"
        )
    return Path(dataset_cfg.path)
