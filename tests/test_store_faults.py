"""A damaged prepared store is refused when the datamodule opens it, before training starts: a
StoreError names the shard and the prepare command that rebuilds the store, and that command
works."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from omegaconf import OmegaConf

from sweep.config.schema import BatchConfig, DataConfig, LoaderConfig, SyntheticConfig
from sweep.data.datamodule import StoreDataModule
from sweep.data.prepare import prepare_store
from sweep.data.store import StoreError, read_manifest
from sweep.data.synthetic import generate

SHARD = "shard_00001.h5ad"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A store of 2 small synthetic sources: 100 HVGs in 3 shards."""
    folder = tmp_path_factory.mktemp("faults")
    generate(
        SyntheticConfig(
            output=str(folder / "src"), n_datasets=2, cells_per_dataset=150, n_genes=300
        )
    )
    out = folder / "store"
    prepare_store(
        {
            "source": str(folder / "src" / "*.h5ad"),
            "output": str(out),
            "n_top_genes": 100,
            "hvg_min_genes": 50,
            "shard_size": 128,
            "workers": 1,
        }
    )
    return out


@pytest.fixture
def store(prepared, tmp_path) -> Path:
    """A copy of the prepared store to damage."""
    return Path(shutil.copytree(prepared, tmp_path / "store"))


def open_store(store: Path) -> StoreDataModule:
    data = OmegaConf.merge(OmegaConf.structured(DataConfig), {"min_genes": 0})
    loader = OmegaConf.merge(OmegaConf.structured(LoaderConfig), {"num_workers": 0})
    return StoreDataModule(store, data, OmegaConf.structured(BatchConfig), loader, seed=0)


def edit_manifest(store: Path, edit) -> None:
    path = store / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def cut_in_half(store: Path) -> None:
    shard = store / SHARD
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def overwrite_signature(store: Path) -> None:
    shard = store / SHARD
    shard.write_bytes(b"\0" * 8 + shard.read_bytes()[8:])


def break_indptr(store: Path) -> None:
    with h5py.File(store / SHARD, "r+") as f:
        f["X/indptr"][-1] -= 1


def widen_counts(store: Path) -> None:
    with h5py.File(store / SHARD, "r+") as f:
        values = f["X/data"][:]
        del f["X/data"]
        f["X"].create_dataset("data", data=values.astype("float64"))


def drop_obs_column(store: Path) -> None:
    with h5py.File(store / SHARD, "r+") as f:
        del f["obs/n_genes_all"]


def more_cells(manifest: dict) -> None:
    manifest["shards"][1]["n_cells"] += 1


def more_nonzeros(manifest: dict) -> None:
    manifest["shards"][1]["nnz"] += 1


FAULTS = {
    "missing": (lambda s: (s / SHARD).unlink(), "is missing"),
    "cut_in_half": (cut_in_half, r"cannot be read \(OSError: .*truncated file"),
    "signature_overwritten": (overwrite_signature, r"cannot be read .*signature not found"),
    "indptr_broken": (break_indptr, "has an inconsistent CSR matrix"),
    "counts_dtype": (
        widen_counts,
        r"has X/data of dtype float64, not one of uint8, uint16, uint32, float32",
    ),
    "obs_column_missing": (drop_obs_column, r"lacks obs columns \['n_genes_all'\]"),
    "manifest_n_cells": (
        lambda s: edit_manifest(s, more_cells),
        r"has shape \(128, 100\), the manifest says \(129, 100\)",
    ),
    "manifest_nnz": (
        lambda s: edit_manifest(s, more_nonzeros),
        r"has (\d+) non-zeros, the manifest says (?!\1)\d+",
    ),
}


def rebuild_command(message: str) -> list[str]:
    """The command between backticks in an error message, split as the shell would."""
    return shlex.split(re.search(r"`(scvi-sweep-prepare [^`]*)`", message).group(1))


@pytest.mark.parametrize("fault", FAULTS)
def test_damaged_shard_names_the_file_and_the_rebuild_command(fault, store, prepared):
    damage, problem = FAULTS[fault]
    damage(store)
    with pytest.raises(StoreError) as caught:
        open_store(store)
    message = str(caught.value)
    assert re.match(f"shard {re.escape(str(store / SHARD))} {problem}", message), message
    command = rebuild_command(message)
    source = read_manifest(prepared).provenance["config"]["source"]
    assert command[1:] == [
        f"source={source}",
        "genes=hvg",
        "shard_size=128",
        "seed=0",
        "n_top_genes=100",
        "hvg_batch_keys=[suspension_type,assay]",
        "hvg_sample_cells=200000",
        "hvg_min_genes=50",
        f"output={store}",
        "overwrite=true",
    ]


def test_the_rebuild_command_repairs_the_store(store, prepared, tmp_path):
    cut_in_half(store)
    with pytest.raises(StoreError) as caught:
        open_store(store)
    command = rebuild_command(str(caught.value))
    command[:1] = [sys.executable, "-m", "sweep.cli.prepare_command"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert open_store(store).n_obs > 0
    assert read_manifest(store).shards == read_manifest(prepared).shards  # the same store again
    assert (store / SHARD).read_bytes() == (prepared / SHARD).read_bytes()


def test_unreadable_manifest_is_a_store_error(store):
    (store / "manifest.json").write_text('{"format": "scvi-sweep-store", "vers')
    with pytest.raises(StoreError, match=r"manifest.json cannot be read .*scvi-sweep-prepare"):
        open_store(store)
    edit = {"format": "scvi-sweep-store", "version": 1, "shards": []}
    (store / "manifest.json").write_text(json.dumps(edit))
    with pytest.raises(StoreError, match=r"manifest.json is damaged \(KeyError: 'genes'\)"):
        open_store(store)


def test_a_format_version_this_code_does_not_know_is_refused(store):
    edit_manifest(store, lambda manifest: manifest.update(version=3))
    with pytest.raises(
        StoreError,
        match=r"is not a scvi-sweep-store v1/v2 manifest \(format, version: "
        r"\('scvi-sweep-store', 3\)\); rebuild it with `scvi-sweep-prepare ",
    ):
        open_store(store)


def test_manifest_without_the_newer_keys_still_reads(store):
    """Manifests written before skipped_sources and prepare_overrides existed."""

    def old(manifest: dict) -> None:
        del manifest["skipped_sources"]
        del manifest["provenance"]["prepare_overrides"]
        manifest["shards"][1]["nnz"] += 1

    edit_manifest(store, old)
    assert read_manifest(store).skipped_sources == []
    with pytest.raises(StoreError, match=rf"`scvi-sweep-prepare source=... output={store} "):
        open_store(store)
