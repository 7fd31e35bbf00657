"""benchmarks.gpu: its loader-share arithmetic and table, the page-cache eviction behind its cold
rows, and a whole ``--small`` run on the CPU written into a doc."""

from __future__ import annotations

import itertools
import os
import time

import pytest
import torch
from benchmarks import gpu, page_cache


def _row(kind: str, cells_per_s: float | None, precision: str = "32-true", **extra) -> dict:
    row = {"kind": kind, "model": "czi_128", "genes": 3241, "precision": precision}
    return {**row, "cells_per_s": cells_per_s, **extra}


def test_loader_share_and_table_on_made_up_rows():
    rows = [
        _row(gpu.MODEL_ONLY, 1000.0, gpu_util=97.0),
        _row(
            gpu.WARM,
            800.0,
            first_epoch_cells_per_s=600.0,
            resident_at_start=1.0,
            gpu_util=80.0,
            workers=3,
        ),
        _row(gpu.COLD, 250.0, first_epoch_cells_per_s=250.0, resident_at_start=0.0, workers=3),
        _row(gpu.COLD, None, precision="bf16-mixed", note="tmpfs"),
        _row(gpu.WARM, 900.0, precision="bf16-mixed", workers=3),  # no model-only row for bf16
    ]
    assert gpu.loader_share(rows[1], rows) == pytest.approx(0.2)
    assert gpu.loader_share(rows[2], rows) == pytest.approx(0.75)
    assert [gpu.loader_share(r, rows) for r in (rows[0], rows[3], rows[4])] == [None] * 3
    header, rule, *lines = gpu.table(rows)
    assert header.count("|") == rule.count("|") == lines[0].count("|") == 11
    assert (
        lines[0] == "| czi_128 | 3,241 | 32-true | model-only | 1,000 | n/a | n/a | 97 | n/a |  |"
    )
    assert lines[1] == (
        "| czi_128 | 3,241 | 32-true | end-to-end, warm store | 800 | 600 | 100% | 80 | 20% | 3 |"
    )
    assert "| 250 | 250 | 0% | n/a | 75% | 3 |" in lines[2]
    assert "| cold not possible: tmpfs | n/a | n/a | n/a | n/a |" in lines[3]


def test_evict_leaves_the_store_cold(tmp_path):
    (tmp_path / "shard_0.h5ad").write_bytes(b"x" * (1 << 20))
    page_cache.warm_up(tmp_path)
    assert page_cache.resident_fraction(tmp_path) > 0.9
    reason = page_cache.evict(tmp_path)
    if reason is None:
        assert page_cache.resident_fraction(tmp_path) <= page_cache.COLD_RESIDENT_MAX
    else:  # a file system whose pages cannot be evicted (tmpfs): the row says so
        assert "stayed in the page cache" in reason


def test_gpu_utilisation_is_the_mean_of_nvidia_smi_samples(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"  # prints 40 then 60, then 50 every 20 ms (-lms), as the real one
    fake.write_text("#!/bin/sh\necho 40\necho 60\nwhile true; do echo 50; sleep 0.02; done\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert gpu.GpuUtilisation("cpu").command is None
    sampler = gpu.GpuUtilisation("cuda")
    sampler.start()
    time.sleep(0.3)
    assert sampler.stop() == pytest.approx(50, abs=1)
    assert len(sampler.samples) >= 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
def test_cuda_absent_says_use_cpu(capsys):
    with pytest.raises(SystemExit):
        gpu.main(["--device", "cuda", "--small"])
    assert "use --device cpu" in capsys.readouterr().err


@pytest.mark.slow
def test_small_run_on_cpu_writes_every_row(tmp_path):
    doc, stores = tmp_path / "benchmarks.md", tmp_path / "stores"
    argv = ["--device", "cpu", "--small", "--in-process", "--workers", "0"]
    gpu.main([*argv, "--store-dir", str(stores), "--write", "--doc", str(doc)])
    text = doc.read_text()
    assert "<!-- bench:gpu:cpu-small -->" in text and "<!-- /bench:gpu:cpu-small -->" in text
    assert f"python -m benchmarks.gpu {' '.join(argv)}" in text
    assert "Loader share: 1 - end-to-end cells/s / model-only cells/s" in text
    assert "--small: a check that every measurement runs" in text
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in gpu.MODELS:
            rows[(cells[0], int(cells[1]), cells[2], cells[3])] = cells[4:]
    kinds = (gpu.MODEL_ONLY, gpu.WARM, gpu.COLD)
    expected = itertools.product(gpu.MODELS, (64, 160), gpu.PRECISIONS, kinds)
    assert sorted(rows) == sorted(expected)
    for (_, _, _, kind), (rate, _, cached, util, share, workers) in rows.items():
        assert util == "n/a"  # no GPU
        if kind == gpu.COLD and rate.startswith("cold not possible: "):
            continue
        assert float(rate.replace(",", "")) > 0
        if kind != gpu.MODEL_ONLY:  # the warm store's files were read; the cold one's evicted
            cached = float(cached.rstrip("%")) / 100
            assert cached >= 0.9 if kind == gpu.WARM else cached <= page_cache.COLD_RESIDENT_MAX
        assert share == "n/a" if kind == gpu.MODEL_ONLY else share.endswith("%")
        assert workers == ("" if kind == gpu.MODEL_ONLY else "0")
    assert not any(stores.iterdir())  # the stores are deleted after
