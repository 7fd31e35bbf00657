"""Where the project's own files live: the Hydra config folder and the data cache."""

import os
from pathlib import Path

#: repository root (this file is src/sweep/paths.py)
REPO_ROOT = Path(__file__).resolve().parents[2]
#: the Hydra config folder (``conf/``)
CONF_DIR = REPO_ROOT / "conf"


def cache_dir() -> Path:
    """Folder for generated data: $SCVI_SWEEP_CACHE or ~/.cache/scvi-sweep."""
    env = os.environ.get("SCVI_SWEEP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "scvi-sweep"
