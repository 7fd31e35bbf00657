"""Where the project's own files live: the Hydra config folder, the reports folder, the data cache.

The configs ship with the package: a wheel holds the checkout's ``conf/`` as ``sweep/conf``
(pyproject.toml, force-include). Run from a checkout (an editable install, or ``src`` on the
path), the package uses the checkout's own ``conf/``, so edits there take effect at once.
"""

import os
from pathlib import Path

#: the ``sweep`` package folder
PACKAGE_DIR = Path(__file__).resolve().parent


def _checkout() -> Path | None:
    """The repository this package runs from (it is ``src/sweep`` there), or None."""
    root = PACKAGE_DIR.parents[1]
    is_checkout = PACKAGE_DIR.parent.name == "src" and (root / "conf" / "train.yaml").is_file()
    return root if is_checkout else None


#: the checkout the package runs from, or None for an installed wheel
REPO_ROOT = _checkout()
#: the Hydra config folder: the checkout's ``conf/``, else the one shipped in the package
CONF_DIR = REPO_ROOT / "conf" if REPO_ROOT else PACKAGE_DIR / "conf"


def reports_dir() -> Path:
    """Default folder of multirun and study reports: ``multirun_reports/`` in the checkout, or
    for an installed wheel in the working folder (where Hydra's ``outputs/`` also go)."""
    return (REPO_ROOT or Path.cwd()) / "multirun_reports"


def cache_dir() -> Path:
    """The project's cache folder, $SCVI_SWEEP_CACHE or ~/.cache/scvi-sweep: the generated data
    sets (``demo-<hash>/``: sources and store), the compiled scoring kernels (``kernels/``) and the
    dry-run calibrations (``calibration/``)."""
    env = os.environ.get("SCVI_SWEEP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "scvi-sweep"
