"""Resuming prepare after a kill: a prepare subprocess is SIGKILLed once its first group file
(pass 2) or its first shard (pass 3) appears; the same prepare then finishes the store, reusing
that work, and the store equals an uninterrupted one (same cells in the same order, same values).
"""

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import pytest

from sweep.config.schema import SyntheticConfig
from sweep.data.prepare import prepare_store, shards
from sweep.data.prepare.output import PLAN_FILE, TMP_DIR
from sweep.data.synthetic import generate

GROUP_NNZ = 40_000  # small groups: several of them (and of the runs of shards)
SLOW = 0.4  # seconds the killed run pauses after each group and run of shards: killed mid-way

# The killed run: prepare in one process, every group and shard followed by a pause.
KILLED = """
import json, sys, time
from sweep.data.prepare import pipeline, shards
shards.GROUP_NNZ = {group_nnz}
def slow(fn):
    def run(*args):
        result = fn(*args)
        time.sleep({slow})
        return result
    return run
pipeline.read_group = slow(pipeline.read_group)
pipeline.write_store_shard = slow(pipeline.write_store_shard)
pipeline.prepare_store(json.loads(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("sources")
    return generate(
        SyntheticConfig(output=str(folder), n_datasets=10, cells_per_dataset=120, n_genes=300)
    )


def config(sources: list[Path], output: Path) -> dict:
    return {
        "source": str(sources[0].parent / "*.h5ad"),
        "output": str(output),
        "genes": "hvg",
        "n_top_genes": 100,
        "hvg_min_genes": 50,
        "shard_size": 64,
        "workers": 1,
        "progress": False,
    }


@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory):
    """The store of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "store"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shards, "GROUP_NNZ", GROUP_NNZ)
        return out, prepare_store(config(sources, out))


def kill_when(cfg: dict, ready) -> None:
    """Run prepare in a subprocess and SIGKILL it as soon as ``ready(output folder)``."""
    script = KILLED.format(group_nnz=GROUP_NNZ, slow=SLOW)
    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(cfg)])
    out, deadline = Path(cfg["output"]), time.time() + 120
    while not ready(out):
        assert process.poll() is None, "prepare ended before the kill"
        assert time.time() < deadline, "prepare never reached the kill point"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def store_content(out: Path, manifest) -> anndata.AnnData:
    return anndata.concat([anndata.read_h5ad(out / s["file"]) for s in manifest.shards])


@pytest.mark.parametrize(
    "kill_point",
    ["first group", "first shard"],
)
def test_resume_after_a_kill_gives_the_uninterrupted_store(
    kill_point, sources, reference, tmp_path, caplog, monkeypatch
):
    out = tmp_path / "store"
    cfg = config(sources, out)
    if kill_point == "first group":
        kill_when(cfg, lambda o: any((o / TMP_DIR).glob("group_*.h5")))
    else:
        kill_when(cfg, lambda o: any(o.glob("shard_*[0-9].h5ad")))
    assert (out / TMP_DIR / PLAN_FILE).is_file() and not (out / "manifest.json").exists()
    written = {p.name for p in (out / TMP_DIR).glob("group_*.h5")} | {
        p.name for p in out.glob("shard_*[0-9].h5ad")
    }

    monkeypatch.setattr(shards, "GROUP_NNZ", GROUP_NNZ)
    caplog.set_level(logging.INFO, logger="sweep.data.prepare")
    manifest = prepare_store(cfg)

    assert "resuming an interrupted run" in caplog.text
    assert "read sources" not in caplog.text  # pass 1 was not run again
    reused = "groups" if kill_point == "first group" else "shards"
    assert f"reusing {sum(reused[:-1] in n for n in written)} of" in caplog.text
    ref_out, ref = reference
    assert manifest.shards == ref.shards and manifest.genes == ref.genes
    assert manifest.vocab == ref.vocab and manifest.sources == ref.sources
    got, expected = store_content(out, manifest), store_content(ref_out, ref)
    assert list(got.obs_names) == list(expected.obs_names)
    assert (got.X != expected.X).nnz == 0 and got.X.dtype == expected.X.dtype
    assert got.obs.equals(expected.obs)
    assert not (out / TMP_DIR).exists()


def test_kill_during_pass_1_starts_over(sources, reference, tmp_path):
    out = tmp_path / "store"
    cfg = config(sources, out)
    kill_when(cfg, lambda o: True)  # at once: nothing written yet
    manifest = prepare_store(cfg | {"overwrite": False})
    ref_out, ref = reference
    assert manifest.shards != [] and manifest.genes == ref.genes
    got, expected = store_content(out, manifest), store_content(ref_out, ref)
    assert list(got.obs_names) == list(expected.obs_names)
    assert np.array_equal(got.X.toarray(), expected.X.toarray())


def test_kill_in_pass_1_keeps_the_groups_read_with_a_gene_list(
    sources, tmp_path, caplog, monkeypatch
):
    genes = tmp_path / "genes.tsv"
    genes.write_text("\n".join(anndata.read_h5ad(sources[0], backed="r").var_names[::3]))
    cfg = config(sources, tmp_path / "store") | {"genes": str(genes)}
    out = Path(cfg["output"])
    kill_when(cfg, lambda o: any((o / TMP_DIR).glob("group_*.h5")))
    assert not (out / TMP_DIR / PLAN_FILE).exists()  # killed in pass 1, which writes groups
    written = len(list((out / TMP_DIR).glob("group_*.h5")))

    monkeypatch.setattr(shards, "GROUP_NNZ", GROUP_NNZ)
    caplog.set_level(logging.INFO, logger="sweep.data.prepare")
    manifest = prepare_store(cfg)
    assert f"reusing {written} of" in caplog.text
    reference = prepare_store(cfg | {"output": str(tmp_path / "reference")})
    assert manifest.shards == reference.shards and manifest.sources == reference.sources
    got, expected = store_content(out, manifest), store_content(tmp_path / "reference", reference)
    assert list(got.obs_names) == list(expected.obs_names)
    assert (got.X != expected.X).nnz == 0 and got.obs.equals(expected.obs)
