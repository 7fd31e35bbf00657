"""Shared fixtures: small stores written directly with the store writer (unit tests), real
synthetic sources prepared into a store (end-to-end tests), and one trained job of
``python train.py -m`` with everything a run folder gets, in pytest's tmp folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sweep.config.schema import SyntheticConfig
from sweep.data.prepare import prepare_store
from sweep.data.store import CODED_COLUMNS, IS_PRIMARY, N_GENES_ALL, StoreWriter
from sweep.data.synthetic import generate

os.environ.setdefault("WANDB_SILENT", "true")


def make_store(
    folder: Path, shard_sizes: list[int], n_genes: int = 60, seed: int = 0, n_codes: int = 3
) -> Path:
    """A store of random counts whose cell ``g`` (global row) has value ``g + 1`` in gene 0.

    Gene 0 thus identifies every cell, so tests can check which cells a loader delivered.
    obs codes are random in [0, n_codes); n_genes_all uniform in [0, 1000).
    """
    rng = np.random.default_rng(seed)
    writer = StoreWriter(
        folder, [f"ENSG{i:011d}" for i in range(n_genes)], [f"G{i}" for i in range(n_genes)]
    )
    shards, first = [], 0
    for s, n in enumerate(shard_sizes):
        X = sp.random(n, n_genes, density=0.2, format="csr", random_state=rng, dtype=np.float32)
        X.data = np.ceil(X.data * 10)
        X = X.tolil()
        X[:, 0] = (np.arange(first, first + n) + 1)[:, None]
        X = sp.csr_matrix(X)
        obs = pd.DataFrame(
            {c: rng.integers(0, n_codes, n).astype(np.int32) for c in CODED_COLUMNS},
            index=[f"cell{g}" for g in range(first, first + n)],
        )
        obs[N_GENES_ALL] = rng.integers(0, 1000, n).astype(np.int32)
        obs[IS_PRIMARY] = rng.random(n) > 0.1
        shards.append(writer.write_shard(s, X, obs))
        first += n
    vocab = {c: [f"{c}-{i}" for i in range(n_codes)] for c in CODED_COLUMNS}
    writer.finish(shards, vocab, max(shard_sizes))
    return folder


def encode_as_version_1(store: Path) -> Path:
    """Rewrite a store in place as format version 1 wrote it: X's counts float32, gene indices
    int32 (contiguous, uncompressed), manifest version 1; the same cells and values."""
    for shard in sorted(store.glob("shard_*.h5ad")):
        with h5py.File(shard, "r+") as f:
            for name, dtype in (("data", np.float32), ("indices", np.int32)):
                values = f["X"][name][:]
                del f["X"][name]
                f["X"].create_dataset(name, data=values.astype(dtype), chunks=None)
    path = store / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"version": 1}, indent=1))
    return store


@pytest.fixture
def small_store(tmp_path) -> Path:
    """5 shards (4 x 500 cells + 1 x 130), 60 genes."""
    return make_store(tmp_path / "store", [500, 500, 500, 500, 130])


#: census-like sources small enough for tests: 4 datasets, ~2,800 cells, 1,500 genes
SMALL = dict(
    n_datasets=4, cells_per_dataset=700, n_genes=1500, n_cell_types=5, donors_per_dataset=2, seed=0
)


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    generate(SyntheticConfig(output=str(folder), **SMALL))
    return folder


@pytest.fixture(scope="session")
def store(sources, tmp_path_factory) -> Path:
    """The sources prepared: 400 HVGs, shards of 700 cells shuffled across sources."""
    out = tmp_path_factory.mktemp("prepared") / "store"
    prepare_store(
        {
            "source": str(sources / "*.h5ad"),
            "output": str(out),
            "genes": "hvg",
            "n_top_genes": 400,
            "shard_size": 700,
            "workers": 2,
        }
    )
    return out


def synthetic_store(folder: Path, n_top_genes: int, **synthetic) -> Path:
    """``folder/store``: sources generated with ``synthetic`` (SyntheticConfig keys) into
    ``folder/sources``, prepared with ``n_top_genes`` HVGs in shards of 256 cells."""
    generate(SyntheticConfig(output=str(folder / "sources"), **synthetic))
    prepare_store(
        {
            "source": str(folder / "sources" / "*.h5ad"),
            "output": str(folder / "store"),
            "genes": "hvg",
            "n_top_genes": n_top_genes,
            "shard_size": 256,
            "workers": 1,
        }
    )
    return folder / "store"


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """2 datasets x 250 cells prepared: ~40 validation cells to score, 2 x 2 donors."""
    return synthetic_store(
        tmp_path_factory.mktemp("tiny"),
        n_top_genes=300,
        n_datasets=2,
        cells_per_dataset=250,
        n_genes=1000,
        donors_per_dataset=2,
        seed=0,
    )


#: the overrides of :func:`trained_job` (after the store's): 3 epochs of the default groups,
#: scored at the last only (scib-metrics compiles once per process), W&B offline, model saved
TRAINED_JOB = (
    "model=czi_128",
    "trainer.max_epochs=3",
    "evaluation.epochs=[]",
    "loader.num_workers=0",
    "trainer.enable_progress_bar=false",
)


@pytest.fixture(scope="session")
def trained_job(tiny_store, tmp_path_factory) -> Path:
    """The run folder of the one job of ``python train.py -m`` (TRAINED_JOB) on the tiny store,
    in ``<tmp>/sweep/0``; its multirun report in ``<tmp>/reports``. Several minutes on 2 cores:
    tests of what a run folder holds share it."""
    from test_train import run_train  # not at the top: it imports scvi-tools

    root = tmp_path_factory.mktemp("trained_job")
    result = run_train(
        "-m",
        "dataset=prepared",
        f"dataset.path={tiny_store}",
        *TRAINED_JOB,
        f"hydra.sweep.dir={root / 'sweep'}",
        f"hydra.callbacks.report.out_root={root / 'reports'}",
        cwd=root,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "sweep" / "0"


# --- real services (tests/services.sh starts them; .ci/run does so before the tests) ---------

#: the study database the `postgres` tests use; the password comes from PGPASSWORD
POSTGRES_URL = os.environ.get("SCVI_SWEEP_POSTGRES", "postgresql://optuna@localhost/optuna")


def _absent(reason: str):
    """Skip a test whose service is missing, with a one-line reason; in CI (CI=true) fail
    instead, since .ci/run starts every service."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI starts it with tests/services.sh)", pytrace=False)
    pytest.skip(f"{reason}: `bash tests/services.sh` starts it (then `export PGPASSWORD=optuna`)")


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The name of a SLURM partition that is up on this machine; skips without one."""
    import shutil
    import subprocess

    if shutil.which("sinfo") is None:
        _absent("SLURM is not installed (no sinfo)")
    done = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True)
    up = [line.split()[0].rstrip("*") for line in done.stdout.splitlines() if " up" in line]
    if done.returncode != 0 or not up:
        _absent(f"no SLURM partition is up ({(done.stderr or done.stdout).strip()[:80]})")
    return up[0]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL URL (no password in it) whose server answers; skips without one."""
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(POSTGRES_URL).connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except Exception as error:  # no driver, no server, no role: all mean "not here"
        _absent(f"no PostgreSQL at {POSTGRES_URL} ({type(error).__name__}; PGPASSWORD set?)")
    return POSTGRES_URL
