"""Compiled kernels kept across processes (issue 21, sweep.evaluation.compile_cache).

A scoring in a fresh process leaves JAX's and numba's kernels in the cache folder; the next
process finds them, compiles none of them again and scores the same to the last digit; two
processes starting at once on an empty folder both score, and leave a cache a third one reads.
The scoring's "compiles its kernels" line is said only where that is true.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sweep.evaluation import compile_cache
from sweep.evaluation.cells import EVAL_BATCH, LABEL, EvaluationCells
from sweep.evaluation.compile_cache import KERNELS, KeptKernels
from sweep.metric_names import BASELINE_PREFIX, CELLS_SEEN, EPOCH, GLOBAL_STEP
from sweep.training import scoring
from sweep.training.epoch_stats import EpochStats

#: one process: keep the kernels in $SCVI_SWEEP_CACHE, score 240 cells (4 cell types, 3 batches)
#: and lay them out; prints the scores, the layout and numba's cache hits and misses as JSON
CHILD = r"""
import json, logging, sys
import numpy as np, pandas as pd, scipy.sparse as sp
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(name)s] %(message)s")
from sweep.evaluation.cells import EVAL_BATCH, LABEL, EvaluationCells
from sweep.evaluation.compile_cache import keep_compiled_kernels
from sweep.evaluation.embedding import umap_layout
from sweep.evaluation.scib import score
from sweep.paths import cache_dir

keep_compiled_kernels(cache_dir())
np.random.seed(0)  # as a job seeds it (scib-metrics draws from it)
rng = np.random.default_rng(0)
n = 240
types, batches = np.repeat(np.arange(4), n // 4), rng.integers(0, 3, n)
latent = rng.normal(size=(n, 8)) + 4 * np.eye(8)[types] + np.eye(8)[batches + 4]
latent = latent.astype(np.float32)
baseline = (latent[:, :6] + rng.normal(size=(n, 6))).astype(np.float32)
obs = pd.DataFrame({EVAL_BATCH: [f"b{b}" for b in batches], LABEL: [f"t{t}" for t in types]})
no_codes = np.zeros(n, np.int32), np.zeros((n, 0), np.int32)
cells = EvaluationCells(np.arange(n), sp.csr_matrix((n, 5)), *no_codes, obs, baseline)
scores = score(cells, latent)
layout = umap_layout(cells, latent, seed=0)

from numba.core.registry import CPUDispatcher
kept = {}
for name, module in list(sys.modules.items()):
    if name.split(".")[0] in ("umap", "pynndescent") and module is not None:
        for value in vars(module).values():
            if isinstance(value, CPUDispatcher) and "Shared" in type(value._cache).__name__:
                kept[id(value)] = value
print(json.dumps({
    "scores": scores,
    "layout": layout.iloc[:, :4].to_numpy().tolist(),
    "numba_hits": sum(sum(d._cache_hits.values()) for d in kept.values()),
    "numba_misses": sum(sum(d._cache_misses.values()) for d in kept.values()),
}))
"""


def start(cache: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """:data:`CHILD` in a fresh interpreter, its cache folder ``cache``; its output goes to
    ``name``.out and .err beside the folder (a full pipe would pause it)."""
    env = {**os.environ, "SCVI_SWEEP_CACHE": str(cache)}
    output = cache.parent / name
    with output.with_suffix(".out").open("wb") as out, output.with_suffix(".err").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD], env=env, stdout=out, stderr=err
        ), output


def finish(child: tuple[subprocess.Popen, Path]) -> tuple[dict, str]:
    """A started child's printed result and its log; fails the test if the child failed."""
    process, output = child
    process.wait(timeout=1500)
    log = output.with_suffix(".err").read_text()
    assert process.returncode == 0, log[-3000:]
    return json.loads(output.with_suffix(".out").read_text().strip().splitlines()[-1]), log


def entries(cache: Path) -> tuple[set[str], set[str]]:
    """The names of the JAX and numba entries kept in ``cache``."""
    (folder,) = (cache / KERNELS).iterdir()  # one machine
    jax = {p.name for p in (folder / "jax").glob("*-cache")}
    return jax, {p.name for p in (folder / "numba").rglob("*.nbi")}


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> tuple[Path, dict, str, tuple[set[str], set[str]]]:
    """A first process's scoring on an empty cache folder: (folder, result, log, entries)."""
    cache = tmp_path_factory.mktemp("kernels") / "cache"
    result, log = finish(start(cache, "first"))
    return cache, result, log, entries(cache)


@pytest.mark.slow
def test_a_scoring_keeps_its_jax_and_numba_kernels_in_the_cache_folder(first):
    cache, result, log, (jax, numba) = first
    assert "are kept in " + str(cache / KERNELS) in log
    assert "none there yet: this process's first scoring compiles them" in log
    assert jax and numba  # scib-metrics' JAX programs; umap's numba functions
    assert result["numba_hits"] == 0 and result["numba_misses"] > 0


@pytest.mark.slow
def test_a_second_process_finds_them_and_scores_the_same(first):
    cache, result, _, kept = first
    again, log = finish(start(cache, "second"))
    assert (
        f"found {len(kept[0])} JAX and {len(kept[1])} numba kernels kept by earlier processes"
        in log
    )
    assert entries(cache) == kept  # nothing compiled again, so nothing new kept
    assert again["numba_hits"] > 0 and again["numba_misses"] < result["numba_misses"]
    assert again["scores"] == result["scores"]  # to the last digit
    assert again["layout"] == result["layout"]


@pytest.mark.slow
def test_two_processes_starting_at_once_on_an_empty_folder_both_score(first, tmp_path):
    _, result, _, kept = first
    cache = tmp_path / "cache"
    both = [start(cache, "one"), start(cache, "two")]
    for child in both:
        scored, _ = finish(child)
        assert scored["scores"] == result["scores"] and scored["layout"] == result["layout"]
    jax, numba = entries(cache)  # JAX's keys hash the folder's path: compare counts
    assert len(jax) == len(kept[0]) and numba == kept[1]
    # what they wrote at the same time is whole: a third process loads it
    third, log = finish(start(cache, "third"))
    assert "kept by earlier processes: loaded" in log and third["numba_hits"] > 0
    assert len(entries(cache)[0]) == len(jax)  # JAX compiled nothing again
    assert third["scores"] == result["scores"] and third["layout"] == result["layout"]


def fake_scores(cells, embedding, baseline=True) -> dict[str, float]:
    """What sweep.evaluation.scib.score returns, without scoring anything."""
    names = ["bio_conservation", "batch_correction", "integration_total"]
    return {prefix + k: 0.5 for k in names for prefix in ("", BASELINE_PREFIX)}


def test_the_compile_line_is_said_only_where_kernels_compile(monkeypatch, caplog):
    """Two jobs in one process (a local multirun): only the first job's first scoring compiles;
    a process that found kept kernels compiles at none."""
    n = 20
    obs = pd.DataFrame({EVAL_BATCH: ["a", "b"] * (n // 2), LABEL: ["T"] * n})
    no_codes = np.zeros(n, np.int32), np.zeros((n, 0), np.int32)
    cells = EvaluationCells(np.arange(n), sp.csr_matrix((n, 3)), *no_codes, obs, np.zeros((n, 2)))
    monkeypatch.setattr(scoring, "latent", lambda module, cells: np.zeros((n, 2)))
    monkeypatch.setattr(scoring, "score", fake_scores)
    at = {GLOBAL_STEP: 10, EPOCH: 1, CELLS_SEEN: 100}
    model = SimpleNamespace(module=None)

    def compile_lines(found: KeptKernels | None, jobs: int) -> list[str]:
        monkeypatch.setattr(compile_cache, "_kept", found)
        monkeypatch.setattr(compile_cache, "_scoring_started", False)  # a new process
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=scoring.log.name):
            for _ in range(jobs):
                job = scoring.IntegrationScoring(cells, [1], EpochStats())
                job.evaluate(model, at)
                job.evaluate(model, at)  # a later scoring of the job: baseline known
        scored = [m for m in caplog.messages if m.startswith("scoring epoch 1 with the PCA")]
        assert len(scored) == jobs
        return [m for m in scored if "compiles its kernels" in m]

    assert len(compile_lines(None, jobs=2)) == 1
    assert len(compile_lines(KeptKernels(Path("k"), jax=0, numba=0), jobs=2)) == 1
    assert compile_lines(KeptKernels(Path("k"), jax=300, numba=17), jobs=2) == []
